"""Tiny but real transformers checkpoints for tests: random init, then per-ingredient perturbation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["make_tiny_bert", "make_tiny_vit", "make_tiny_resnet", "perturb_checkpoint", "write_tiny_tokenizer",
           "sentiment_examples", "finetune_tiny_classifier", "make_tiny_sweep", "write_csv"]

_WORDS = ("good great fine bad awful terrible movie film plot actor boring fun love hate the a is was not very "
          "really quite so").split()


def write_tiny_tokenizer(path: str | os.PathLike[str], extra_words: tuple[str, ...] = ()) -> None:
    """A real BERT WordPiece tokenizer over a tiny vocabulary."""
    from transformers import BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *extra_words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(path)


def _labels(num_labels: int, id2label: Mapping[int, str] | None) -> dict[str, Any]:
    id2label = dict(id2label or {i: f"LABEL_{i}" for i in range(num_labels)})
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def make_tiny_bert(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    num_labels: int = 3,
    id2label: Mapping[int, str] | None = None,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int = "5GB",
    tokenizer: bool = True,
    head: str = "sequence",
    **config_kwargs: Any,
) -> str:
    """Save a randomly initialised tiny `BertFor*` (seed `seed`) with its tokenizer; returns `path`."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(_WORDS) + 8, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=4, intermediate_size=hidden_size * 2, max_position_embeddings=64,
        **_labels(num_labels, id2label), **config_kwargs,
    )
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if head == "sequence" else BertForMaskedLM
    model = cls(config).to(dtype)
    model.save_pretrained(path, max_shard_size=max_shard_size)
    if tokenizer:
        write_tiny_tokenizer(path)
    return os.fspath(path)


def make_tiny_vit(path: str | os.PathLike[str], seed: int = 0, *, num_labels: int = 3,
                  dtype: torch.dtype = torch.float32, max_shard_size: str | int = "5GB") -> str:
    """Save a randomly initialised tiny `ViTForImageClassification` with an image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, **_labels(num_labels, None))
    torch.manual_seed(seed)
    ViTForImageClassification(config).to(dtype).save_pretrained(path, max_shard_size=max_shard_size)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return os.fspath(path)


def make_tiny_resnet(path: str | os.PathLike[str], seed: int = 0, *, num_labels: int = 3,
                     dtype: torch.dtype = torch.float32) -> str:
    """Save a tiny BatchNorm ConvNet (`ResNetForImageClassification`): it has integer `num_batches_tracked`."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", **_labels(num_labels, None))
    torch.manual_seed(seed)
    ResNetForImageClassification(config).to(dtype).save_pretrained(path)
    return os.fspath(path)


def perturb_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str], seed: int, scale: float = 0.01,
                       max_shard_size: str | int = "5GB", dtype: torch.dtype | None = None) -> str:
    """Copy a checkpoint with every floating tensor moved by `scale * std * N(0, 1)`: a cheap stand-in for a fine-tune."""
    import shutil

    from transformers import AutoConfig

    from ..modeling import model_class

    config = AutoConfig.from_pretrained(src)
    model = model_class(config.to_dict()).from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * scale * (p.float().std() if p.numel() > 1 else 1.0))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(dst, max_shard_size=max_shard_size)
    for name in os.listdir(src):
        if name.endswith((".safetensors", ".json.bak")) or name in ("model.safetensors.index.json", "config.json"):
            continue
        full = os.path.join(src, name)
        if os.path.isfile(full) and not os.path.exists(os.path.join(dst, name)):
            shutil.copyfile(full, os.path.join(dst, name))
    return os.fspath(dst)


def sentiment_examples(n: int, seed: int = 0) -> dict[str, list]:
    """A synthetic two-class sentiment set over the tiny tokenizer's words (label 1 = positive)."""
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine", "love", "fun"], ["bad", "awful", "terrible", "hate", "boring"]
    filler = ["the", "movie", "film", "plot", "actor", "was", "is", "very", "really", "quite", "so", "a"]
    texts, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.sample(filler, 4) + [rng.choice(pos if label else neg)]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return {"text": texts, "label": labels}


def finetune_tiny_classifier(base: str | os.PathLike[str], dst: str | os.PathLike[str], *, seed: int, lr: float,
                             steps: int = 40, batch_size: int = 16, data_seed: int = 0) -> str:
    """Fine-tune a tiny sequence classifier on [`sentiment_examples`] with AdamW; returns `dst`."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    data = sentiment_examples(steps * batch_size, seed=data_seed + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        sl = slice(step * batch_size, (step + 1) * batch_size)
        batch = tok(data["text"][sl], return_tensors="pt", padding=True)
        loss = model(**batch, labels=torch.tensor(data["label"][sl])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(dst)
    for name in os.listdir(base):
        if name.startswith("tokenizer") or name in ("vocab.txt", "special_tokens_map.json"):
            shutil.copyfile(os.path.join(base, name), os.path.join(dst, name))
    return os.fspath(dst)


def make_tiny_sweep(root: str | os.PathLike[str], n_good: int = 3, bad: bool = True) -> dict[str, Any]:
    """A base tiny classifier and a sweep of real fine-tunes of it, plus one destroyed by a huge learning rate.

    Returns:
        `dict`: `{"base": path, "good": [paths], "bad": path or None, "refs": good + [bad]}`.
    """
    root = os.fspath(root)
    base = make_tiny_bert(os.path.join(root, "base"), seed=0, num_labels=2,
                          id2label={0: "negative", 1: "positive"}, initializer_range=0.1)
    good = [finetune_tiny_classifier(base, os.path.join(root, f"ft{i}"), seed=i, lr=1e-3 * (1 - 0.15 * i), steps=60)
            for i in range(n_good)]
    worst = finetune_tiny_classifier(base, os.path.join(root, "bad"), seed=9, lr=1.0, steps=20) if bad else None
    return {"base": base, "good": good, "bad": worst, "refs": good + ([worst] if worst else [])}


def write_csv(path: str | os.PathLike[str], data: dict[str, list], text_column: str = "text") -> str:
    """Write `{"text": [...], "label": [...]}` as a csv with the given text column name."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([text_column, "label"])
        writer.writerows(zip(data["text"], data["label"]))
    return os.fspath(path)
