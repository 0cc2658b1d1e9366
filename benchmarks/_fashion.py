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
