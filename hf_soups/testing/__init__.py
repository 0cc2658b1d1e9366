"""Test helpers shipped with hf_soups: tiny real checkpoints and a loopback Hub server, for users' own tests."""

from .factories import make_tiny_bert, make_tiny_resnet, make_tiny_vit, perturb_checkpoint, write_tiny_tokenizer

__all__ = ["make_tiny_bert", "make_tiny_resnet", "make_tiny_vit", "perturb_checkpoint", "write_tiny_tokenizer"]
