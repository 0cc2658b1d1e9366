"""Image processors in the verdict: which `preprocessor_config.json` settings must agree between ingredients.

Pure functions over the parsed JSON (the reading is in `checkpoint/meta.py`, the fetching in `hub/`).

Decision (documented in the README):

- **problem** (the set is incompatible): settings that change the pixels a model sees enough to change its
  predictions: resizing (`do_resize`, `size`), cropping (`do_center_crop`, `crop_size`, `crop_pct`), rescaling
  (`do_rescale`, `rescale_factor`, `rescale_offset`), normalisation (`do_normalize`, `image_mean`, `image_std`,
  `include_top`) and padding (`do_pad`, `pad_size`). Averaged weights are evaluated and shipped with one processor,
  so ingredients fine-tuned on different inputs cannot be souped faithfully;
- **warning**: the interpolation filter (`resample`), `do_convert_rgb`, a different processor class with the same
  settings, and a processor shipped by only some ingredients. Each ingredient is still scored with its own
  processor, and the soup ships the processor of its highest-weight ingredient.

A slow and a fast processor class (`ViTImageProcessor` / `ViTImageProcessorFast`) are the same processor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PIXEL_FIELDS", "MINOR_FIELDS", "processor_findings", "lead_index"]


#: Settings whose difference is a problem: they change the model's input pixels.
PIXEL_FIELDS: tuple[str, ...] = ("do_resize", "size", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
                                 "rescale_factor", "rescale_offset", "do_normalize", "image_mean", "image_std",
                                 "include_top", "do_pad", "pad_size")
#: Settings whose difference is a warning.
MINOR_FIELDS: tuple[str, ...] = ("resample", "do_convert_rgb")


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in sorted(value.items())}
    return value


def _class_name(config: Mapping[str, Any]) -> str | None:
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    return str(name).removesuffix("Fast") if name else None


def processor_findings(ref_name: str, ref: Mapping[str, Any] | None, name: str,
                       other: Mapping[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """Compare one ingredient's image processor settings with the reference ingredient's.

    Args:
        ref_name, name (`str`): the reference ingredient and the compared one.
        ref, other (`Mapping`, *optional*): their parsed `preprocessor_config.json`, `None` when absent.

    Returns:
        `list[tuple[str, str, str, str]]`: `(severity, field, message, fix)`, severity `"error"` or `"warning"`.
    """
    if ref is None and other is None:
        return []
    if ref is None or other is None:
        who = name if other is None else ref_name
        return [("warning", "image processor", f"only some ingredients ship an image processor ('{who}' has no "
                 "preprocessor_config.json); its settings could not be compared.",
                 "save every ingredient with its image processor (processor.save_pretrained).")]
    out = []
    fix = (f"soup only fine-tunes trained on identically preprocessed images: re-save '{name}' with the image "
           "processor it was fine-tuned with if this file is wrong, or remove it.")
    for key in PIXEL_FIELDS + MINOR_FIELDS:
        a, b = ref.get(key), other.get(key)
        if key not in ref and key not in other:
            continue
        if _canon(a) == _canon(b):
            continue
        severity = "error" if key in PIXEL_FIELDS and key in ref and key in other else "warning"
        missing = " (unset)" if key not in other else ""
        note = "" if severity == "error" else " Each ingredient is scored with its own processor; the soup ships " \
                                               "its highest-weight ingredient's."
        out.append((severity, f"image processor {key}", f"{b!r}{missing} differs from {a!r} in '{ref_name}'.{note}",
                    fix if severity == "error" else "none needed if the difference is intended."))
    if _class_name(ref) != _class_name(other) and not any(s == "error" for s, *_ in out):
        out.append(("warning", "image processor class", f"{_class_name(other)} differs from {_class_name(ref)} in "
                    f"'{ref_name}' (the compared settings agree).", "none needed if the difference is intended."))
    return out


def lead_index(weights: Sequence[float], scores: Sequence[float | None] | None = None) -> int:
    """The ingredient whose small files (image processor) a soup ships: the highest weight; ties go to the better
    held-out score, then to the earlier ingredient. Never an ingredient with weight 0 when another has more."""
    def key(i: int) -> tuple[float, float, int]:
        score = scores[i] if scores is not None and scores[i] is not None else float("-inf")
        return (round(float(weights[i]), 9), float(score), -i)  # type: ignore[arg-type]

    return max(range(len(weights)), key=key)
