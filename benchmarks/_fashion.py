"""Fashion-MNIST from Debian's `dataset-fashion-mnist`, with shifted copies (noise, low contrast, rotation, blur)."""

from __future__ import annotations

import gzip
import os

import numpy as np

ROOT = "/usr/share/datasets/fashion-mnist"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _idx(name: str, offset: int) -> np.ndarray:
    if not os.path.isdir(ROOT):
        raise SystemExit("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (make test does it)")
    with gzip.open(os.path.join(ROOT, name)) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8 arrays."""
    return (_idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _idx("train-labels-idx1-ubyte.gz", 8),
            _idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), _idx("t10k-labels-idx1-ubyte.gz", 8))


def shifts(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Distribution-shifted copies of a batch of images."""
    rng = np.random.default_rng(seed)
    padded = np.pad(x.astype(np.float32), ((0, 0), (1, 1), (1, 1)), mode="edge")
    blur = sum(padded[:, i : i + 28, j : j + 28] for i in range(3) for j in range(3)) / 9
    return {
        "ood_noise": np.clip(x + rng.normal(0, 40, x.shape), 0, 255).astype(np.uint8),
        "ood_contrast": (x * 0.35 + 80).astype(np.uint8),
        "ood_rotation": np.rot90(x, k=1, axes=(1, 2)).copy(),
        "ood_blur": blur.astype(np.uint8),
    }


def to_dataset(x: np.ndarray, y: np.ndarray):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": [Image.fromarray(a) for a in x], "label": [int(v) for v in y]},
                             features=features)


def vit_base(work: str, seed: int = 0) -> str:
    """A small randomly initialised `ViTForImageClassification` for 28x28 Fashion-MNIST, with its processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=28, patch_size=7, num_channels=3, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=128, num_labels=10,
                       id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    torch.manual_seed(seed)
    path = os.path.join(work, "base")
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(path)
    return path


def lite0_base(work: str, size: int = 64, seed: int = 0) -> str:
    """The converted ImageNet EfficientNet-Lite0 with one seeded 10-class head, taking `size`x`size` inputs."""
    import torch
    from _efficientnet import convert_lite0
    from transformers import EfficientNetForImageClassification, EfficientNetImageProcessor

    imagenet = convert_lite0(os.path.join(work, "lite0-imagenet"))
    torch.manual_seed(seed)  # one shared classifier-head initialisation for every ingredient
    model = EfficientNetForImageClassification.from_pretrained(
        imagenet, num_labels=10, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
        ignore_mismatched_sizes=True)
    path = os.path.join(work, "base")
    model.save_pretrained(path)
    EfficientNetImageProcessor(size={"height": size, "width": size}, do_center_crop=False, image_mean=[0.5] * 3,
                               image_std=[0.5] * 3, rescale_offset=False, include_top=False).save_pretrained(path)
    return path


def train_vit(base: str, images: np.ndarray, labels: np.ndarray, out: str, *, lr: float, seed: int,
              epochs: int = 2, batch_size: int = 64) -> str:
    """Train a copy of the image classifier `base` with AdamW on uint8 images; saves model and processor to `out`."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor
    from transformers import AutoModelForImageClassification as ViTForImageClassification

    processor = AutoImageProcessor.from_pretrained(base)
    torch.manual_seed(seed)
    model = ViTForImageClassification.from_pretrained(base)
    mode = "L" if model.config.num_channels == 1 else "RGB"  # 1-channel models get 1-channel images
    pixels = processor([Image.fromarray(a).convert(mode) for a in images], return_tensors="pt")["pixel_values"]
    targets = torch.tensor(labels.astype("int64"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(targets))
        for i in range(0, len(targets), batch_size):
            b = order[i : i + batch_size]
            loss = model(pixel_values=pixels[b], labels=targets[b]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
