"""Vision at scale: BatchNorm ConvNets (averaged or recomputed statistics), CLIP vision towers, fp16 ingredients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import state_dict_of
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from hf_soups import soup_from_hub
from hf_soups.testing import make_tiny_resnet, perturb_checkpoint
from hf_soups import MergeOptions


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict({"image": imgs, "label": [i % 3 for i in range(n)]}).cast_column("image", ImageFeature())


def _resnet_with_processor(path, seed):
    from transformers import ConvNextImageProcessor

    make_tiny_resnet(path, seed=seed)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(path)
    return str(path)


def test_batchnorm_statistics_are_averaged_by_default_and_recomputed_on_request(tmp_path):
    base = _resnet_with_processor(tmp_path / "base", seed=0)
    refs = [perturb_checkpoint(base, tmp_path / f"r{i}", seed=i, scale=0.05) for i in (1, 2)]
    for r in refs:
        from transformers import ConvNextImageProcessor

        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(r)
    soup = soup_from_hub(refs, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    sds = [state_dict_of(r) for r in refs]
    out = state_dict_of(soup.output_dir)
    var = "resnet.embedder.embedder.normalization.running_var"
    torch.testing.assert_close(out[var], (sds[0][var] + sds[1][var]) / 2, atol=1e-6, rtol=0)

    calib = _images(48, seed=3)
    soup = soup.recompute_batchnorm(calib, batch_size=16)
    assert soup.batchnorm_layers > 0
    recomputed = state_dict_of(soup.output_dir)
    # independent truth: cumulative average of per-batch statistics, as torch.optim.swa_utils.update_bn computes
    from transformers import AutoImageProcessor, ResNetForImageClassification

    model = ResNetForImageClassification.from_pretrained(soup.output_dir)  # weights are the soup's
    layer = model.resnet.embedder.embedder
    processor = AutoImageProcessor.from_pretrained(soup.output_dir)
    pixels = processor([im.convert("RGB") for im in calib["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = [layer.convolution(pixels[i : i + 16]) for i in range(0, 48, 16)]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    mean = "resnet.embedder.embedder.normalization.running_mean"
    torch.testing.assert_close(recomputed[mean], expected_mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(recomputed[var], expected_var, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(recomputed[var], out[var])
    for k in out:  # everything but the BatchNorm statistics is untouched
        if "running_" not in k and "num_batches_tracked" not in k:
            assert torch.equal(recomputed[k], out[k]), k
    assert (tmp_path / "soup" / "README.md").exists()


def test_clip_vision_tower_classifier(tmp_path):
    from transformers import CLIPConfig, CLIPForImageClassification

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 99},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": 16, "patch_size": 4},
        num_labels=3,
    )
    torch.manual_seed(0)
    CLIPForImageClassification(config).save_pretrained(tmp_path / "base")
    refs = [perturb_checkpoint(tmp_path / "base", tmp_path / f"c{i}", seed=i) for i in (1, 2)]
    soup = soup_from_hub(refs, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    sds = [state_dict_of(r) for r in refs]
    out = state_dict_of(soup.output_dir)
    for k in out:
        assert (out[k] - (sds[0][k] + sds[1][k]) / 2).abs().max() <= 1e-6
    _, info = CLIPForImageClassification.from_pretrained(soup.output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_ingredients(tmp_path, dtype):
    from hf_soups.testing import make_tiny_vit

    base = make_tiny_vit(tmp_path / "base", seed=0)
    refs = [perturb_checkpoint(base, tmp_path / f"h{i}", seed=i, dtype=dtype) for i in (1, 2, 3)]
    out = state_dict_of(soup_from_hub(refs, output_dir=tmp_path / "soup",
                        merge_options=MergeOptions(progress=False)).output_dir)
    sds = [state_dict_of(r) for r in refs]
    for k, v in out.items():
        assert v.dtype == dtype
        assert torch.equal(v, torch.stack([sd[k].float() for sd in sds]).mean(0).to(dtype)), k


def test_efficientnet_lite0_conversion_matches_reference_and_soups(tmp_path):
    """Genuine ImageNet EfficientNet-Lite0 weights as a native EfficientNetForImageClassification: logits match the
    weights' reference implementation, and BatchNorm soups of it load and match a hand-averaged model."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from _efficientnet import convert_lite0, reference_lite0
    from transformers import EfficientNetForImageClassification

    base = convert_lite0(str(tmp_path / "lite0"))
    model = EfficientNetForImageClassification.from_pretrained(base).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, reference_lite0()(x), atol=1e-4, rtol=1e-4)
    refs = [perturb_checkpoint(base, tmp_path / f"e{i}", seed=i, scale=0.01) for i in (1, 2)]
    soup = soup_from_hub([base, *refs], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    sds = [state_dict_of(p) for p in (base, *refs)]
    out = state_dict_of(soup.output_dir)
    bn = [k for k in out if k.endswith("running_var")]
    assert bn and all(torch.allclose(out[k], torch.stack([sd[k] for sd in sds]).mean(0), atol=1e-6) for k in bn)
    hand = EfficientNetForImageClassification.from_pretrained(base).eval()
    hand_state = hand.state_dict()
    models = [EfficientNetForImageClassification.from_pretrained(p).state_dict() for p in (base, *refs)]
    hand.load_state_dict({k: torch.stack([m[k].float() for m in models]).mean(0).to(hand_state[k].dtype)
                          if hand_state[k].is_floating_point() else hand_state[k] for k in hand_state})
    with torch.no_grad():
        torch.testing.assert_close(soup.model(pixel_values=x).logits, hand(pixel_values=x).logits, atol=1e-4,
                                   rtol=1e-4)
