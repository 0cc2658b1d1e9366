"""Test helpers shipped with hf_soups: tiny real checkpoints and a loopback Hub server, for users' own tests."""

from .factories import (
    finetune_tiny_classifier,
    make_tiny_bert,
    make_tiny_resnet,
    make_tiny_sweep,
    make_tiny_vit,
    perturb_checkpoint,
    sentiment_examples,
    write_csv,
    write_tiny_tokenizer,
)

__all__ = ["finetune_tiny_classifier", "make_tiny_bert", "make_tiny_resnet", "make_tiny_vit", "perturb_checkpoint",
           "sentiment_examples", "write_tiny_tokenizer", "make_tiny_sweep", "write_csv"]
