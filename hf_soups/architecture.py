"""The architecture check: instantiate the config's model on the meta device and compare it with the headers.

`accelerate.init_empty_weights()` builds the skeleton without allocating memory, so this catches a checkpoint that
does not match its own config (a renamed, missing or reshaped tensor) before any weight is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import constants
from .checkpoint.format import TensorInfo
from .compat import Problem

__all__ = ["expected_tensors", "architecture_problems"]

logger = logging.getLogger(__name__)

_LEGACY = ((".gamma", ".weight"), (".beta", ".bias"))


def expected_tensors(config: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], list[set[str]], Any] | None:
    """Names and shapes the config's model writes with `save_pretrained`, its tied groups, and the meta model.

    Returns `None` when the architecture is not a transformers class (remote code is never imported here) or
    cannot be built.
    """
    import transformers
    from accelerate import init_empty_weights

    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None or not hasattr(cls, "config_class"):
        return None
    try:
        cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "auto_map"})
        with init_empty_weights(include_buffers=True):
            model = cls(cfg)
        state = model.state_dict()
        try:  # the names save_pretrained writes (transformers >= 5 renames some weights on load and back on save)
            from transformers.core_model_loading import revert_weight_conversion

            state = revert_weight_conversion(model, dict(state))
        except Exception:
            pass
    except Exception as e:  # a config transformers cannot build: reported by the caller as a warning
        logger.debug("cannot instantiate %s on meta: %s", archs, e)
        return None
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    groups: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), set()).add(name)
    return shapes, [g for g in groups.values() if len(g) > 1], model


def _ignored(model: Any, attr: str, extra: tuple[str, ...] = ()) -> Any:
    import re

    patterns = set(getattr(model, attr, None) or ()) | set(extra)
    return re.compile("|".join(f"({p})" for p in patterns)) if patterns else None


def _normalise(name: str) -> str:
    for old, new in _LEGACY:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def architecture_problems(name: str, config: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> list[Problem]:
    """Compare a checkpoint's tensors (from headers) with what its own config's model expects.

    Returns:
        `list[Problem]`: errors for tensors the model does not know (e.g. renamed), expected tensors that are missing
        (tied weights stored once are fine) and shape mismatches; a warning when the model cannot be built.
    """
    built = expected_tensors(config)
    if built is None:
        return [Problem(name, "architecture", f"could not instantiate {config.get('architectures')} from its config "
                        "on the meta device; the checkpoint was not checked against it.",
                        "none needed if the checkpoint loads with from_pretrained.", "warning")]
    expected, tied, model = built
    has_position_ids = any(n.endswith("position_ids") for n, _ in model.named_buffers())
    legacy_buffers = tuple(p for p in constants.LEGACY_BUFFER_PATTERNS
                           if p != constants.LEGACY_POSITION_IDS or has_position_ids)
    skip_unexpected = _ignored(model, "_keys_to_ignore_on_load_unexpected", legacy_buffers)
    skip_missing = _ignored(model, "_keys_to_ignore_on_load_missing")
    model_names = set(model.state_dict())
    have = {_normalise(n): info for n, info in tensors.items()}
    prefix = ""
    if expected and not (set(have) & set(expected)):
        # a base-model checkpoint (no prefix) or the reverse: align on the shared suffix
        first = next(iter(expected))
        prefix = first.split(".", 1)[0] + "." if "." in first else ""
        have = {prefix + n: info for n, info in have.items()}
    problems = []
    unexpected = sorted(n for n in have if n not in expected and n not in model_names
                        and not (skip_unexpected and skip_unexpected.search(n)))
    missing = sorted(n for n in expected if n not in have and not (skip_missing and skip_missing.search(n))
                     and not any(n in g and any(o in have for o in g) for g in tied))
    if unexpected:
        problems.append(Problem(name, "architecture", f"{len(unexpected)} tensor(s) unknown to "
                                f"{config.get('architectures', ['?'])[0]}: {unexpected[:5]} (renamed?).",
                                "re-save the checkpoint with save_pretrained from the matching transformers class."))
    if missing:
        problems.append(Problem(name, "architecture", f"{len(missing)} tensor(s) that "
                                f"{config.get('architectures', ['?'])[0]} needs are missing: {missing[:5]}; "
                                "from_pretrained would initialise them randomly.",
                                "re-save the checkpoint with save_pretrained, or fix its config.json."))
    for n, info in have.items():
        if n in expected and tuple(info.shape) != expected[n]:
            problems.append(Problem(name, f"tensor {n}", f"shape {list(info.shape)} but the config implies "
                                    f"{list(expected[n])}.", "fix config.json or re-export the checkpoint."))
    return problems
