"""Loading transformers models from soups and ingredients, with remote code refused by default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import SoupError, UnsafeCheckpointError

__all__ = ["model_class", "load_model", "check_remote_code"]


def check_remote_code(config: Mapping[str, Any], ingredient: str, trust_remote_code: bool) -> None:
    """Refuse a config that needs code from the repository (`auto_map`) unless the user opted in.

    Raises:
        [`UnsafeCheckpointError`]: `auto_map` is set and `trust_remote_code=False`.
    """
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeCheckpointError(
            f"config.json has an auto_map ({sorted(config['auto_map'])}): loading it would run Python code "
            "from the repository.", ingredient=ingredient, file="config.json",
            fix="review the repository's code, then pass trust_remote_code=True.",
        )


def model_class(config: Mapping[str, Any], trust_remote_code: bool = False) -> Any:
    """The transformers class named by `config.architectures[0]`; an Auto class only for opted-in remote code."""
    import transformers

    archs = config.get("architectures") or []
    if archs and hasattr(transformers, archs[0]):
        return getattr(transformers, archs[0])
    if trust_remote_code:
        return transformers.AutoModel
    raise SoupError(
        f"transformers has no class for architectures={archs}.",
        fix="set `architectures` in config.json to a transformers class, or pass trust_remote_code=True "
            "for a model whose code lives in its repository.",
    )


def load_model(directory: str | os.PathLike[str], config: Mapping[str, Any] | None = None,
               trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """`from_pretrained` of the class named in the config, never trusting remote code implicitly."""
    if config is None:
        from .checkpoint.meta import read_config

        config = read_config(os.path.join(directory, "config.json"), os.fspath(directory))
    check_remote_code(config, os.fspath(directory), trust_remote_code)
    cls = model_class(config, trust_remote_code)
    return cls.from_pretrained(directory, trust_remote_code=trust_remote_code, **kwargs)
