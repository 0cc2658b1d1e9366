"""The compatibility verdict: pure functions over configs, safetensors headers and tokenizer hashes.

Nothing here reads weights, imports torch or speaks HTTP. The one check that reads a small sample of tensors,
[`hf_soups.distance.init_distance_warnings`], lives in its own module; its verdict ([`init_outlier_warnings`]) is here.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import constants
from .checkpoint.format import TensorInfo
from .checkpoint.meta import normalize_id2label
from .errors import IncompatibleIngredientsError
from .problem import Problem
from .refs import IngredientMeta

__all__ = ["IngredientMeta", "Problem", "CompatibilityReport", "compare", "verdict",
           "label_permutations", "sample_tensor_names", "init_outlier_warnings",
           "normalize_id2label", "label_problems", "remote_code_problems", "processor_findings", "SIZE_KEYS",
           "PIXEL_FIELDS", "MINOR_FIELDS", "tied_extras"]

#: Config fields that fix a model's size; ingredients that differ in one are summarised once ("hidden_size 32 vs 384")
#: instead of tensor by tensor.
SIZE_KEYS: tuple[str, ...] = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                              "intermediate_size", "vocab_size", "max_position_embeddings", "d_model", "n_embd",
                              "n_layer", "n_head", "num_layers", "embed_dim", "hidden_sizes", "depths", "image_size",
                              "patch_size", "num_channels")

_HEAD_MARKERS = (*constants.CLASSIFIER_MARKERS, "fc.")  # heads are re-initialised per fine-tune: not init signal

#: Output embeddings that transformers ties to the input embeddings when `tie_word_embeddings` is on (the default):
#: `from_pretrained` re-ties them after loading, so a stored copy is never used.
_OUTPUT_EMBEDDING = re.compile(r"(^|\.)(lm_head|lm_head\.decoder|cls\.predictions\.decoder|vocab_projector|"
                               r"generator_lm_head|pred_layer\.proj|lm_loss)\.weight$")
_INPUT_EMBEDDING = re.compile(r"(^|\.)(word_embeddings|embed_tokens|wte|shared|word_emb)\.weight$")


@dataclass
class CompatibilityReport:
    """The verdict on a set of ingredients.

    Attributes:
        ingredients (`list[str]`): the ingredients compared, the first being the reference.
        problems (`list[Problem]`): blocking problems.
        warnings (`list[Problem]`): non-blocking findings (mixed dtypes, a distant init, ...).
        weight_check (`str`, *optional*): what the weight-space init check did (how many tensors it read, how), or
            why it was skipped.
    """

    ingredients: list[str]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    weight_check: str | None = None

    @property
    def compatible(self) -> bool:
        """`True` when there is no blocking problem."""
        return not self.problems

    def __bool__(self) -> bool:
        return self.compatible

    def add(self, problem: Problem) -> None:
        (self.problems if problem.severity == "error" else self.warnings).append(problem)

    def raise_if_incompatible(self) -> None:
        """Raise [`IncompatibleIngredientsError`] when the verdict is negative."""
        if not self.compatible:
            raise IncompatibleIngredientsError(self)

    def to_table(self) -> str:
        """A plain-text table of the verdict, for terminals and logs."""
        verdict = "COMPATIBLE" if self.compatible else "INCOMPATIBLE"
        rows = [("severity", "ingredient", "field", "message / fix")]
        for p in self.problems + self.warnings:
            rows.append((p.severity, p.ingredient, p.field, f"{p.message} Fix: {p.fix}"))
        widths = [min(max(len(r[i]) for r in rows), 48) for i in range(3)]
        lines = [f"Verdict: {verdict} ({len(self.ingredients)} ingredients, {len(self.problems)} problems, "
                 f"{len(self.warnings)} warnings)"]
        lines += [f"  {i}. {name}" for i, name in enumerate(self.ingredients, 1)]
        if len(rows) > 1:
            for r in rows:
                lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        if self.weight_check:
            lines.append(f"Weight-space check: {self.weight_check}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compatible": self.compatible,
            "ingredients": self.ingredients,
            "problems": [p.__dict__ for p in self.problems],
            "warnings": [p.__dict__ for p in self.warnings],
            "weight_check": self.weight_check,
        }


def _num_labels(config: Mapping[str, Any]) -> int | None:
    if isinstance(config.get("num_labels"), int):
        return config["num_labels"]
    labels = normalize_id2label(config)
    if labels is not None:
        return len(labels)
    if config.get("id2label") is not None:  # a malformed label map: reported by label_problems, never guessed
        return None
    # transformers omits the default label map (2 labels) from config.json; heads-only configs declare neither
    return 2 if any(a.endswith("Classification") for a in config.get("architectures") or []) else None


def label_problems(meta: IngredientMeta, *, align_labels: bool = False) -> list[Problem]:
    """Problems with one ingredient's own `id2label`: keys that are not integers, and (when the classifier rows are
    to be permuted) keys that are not `0..n-1` or repeated label names, which leave no well-defined row order."""
    raw = meta.config.get("id2label")
    if raw is None:
        return []
    labels = normalize_id2label(meta.config)
    if labels is None:
        shown = sorted(str(k)[:20] for k in raw)[:5] if isinstance(raw, Mapping) else type(raw).__name__
        return [Problem(meta.name, "id2label", f"config.json's id2label must map integer ids to names; got keys "
                        f"{shown}.", "fix id2label in config.json (transformers cannot load it either).")]
    if not align_labels:
        return []
    problems = []
    if sorted(labels) != list(range(len(labels))):
        problems.append(Problem(meta.name, "id2label", f"ids {sorted(labels)[:8]} are not 0..{len(labels) - 1}, so "
                                "they do not name classifier rows; the rows cannot be aligned.",
                                "renumber id2label from 0 in config.json, or drop align_labels."))
    if len(set(labels.values())) != len(labels):
        problems.append(Problem(meta.name, "id2label", "the same label name appears under several ids; the rows "
                                "cannot be aligned by name.", "give every label a distinct name, or drop align_labels."))
    return problems


def remote_code_problems(metas: Sequence[IngredientMeta], trust_remote_code: bool) -> list[Problem]:
    """A problem per config with an `auto_map` when remote code is not trusted (the soup refuses them)."""
    return [Problem(m.name, "auto_map", f"config.json has an auto_map ({sorted(m.config['auto_map'])[:3]}): "
                    "loading it would run Python code from the repository; the soup refuses it.",
                    "review the repository's code, then pass trust_remote_code=True.")
            for m in metas if m.config.get("auto_map") and not trust_remote_code]


def _names(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


#: Image processor settings (`preprocessor_config.json`) whose difference is a problem: they change the pixels a model
#: sees enough to change its predictions (resizing, cropping, rescaling, normalisation, padding). Averaged weights are
#: evaluated and shipped with one processor, so ingredients fine-tuned on differently preprocessed inputs cannot be
#: souped faithfully.
PIXEL_FIELDS: tuple[str, ...] = ("do_resize", "size", "do_center_crop", "crop_size", "crop_pct", "do_rescale",
                                 "rescale_factor", "rescale_offset", "do_normalize", "image_mean", "image_std",
                                 "include_top", "do_pad", "pad_size")
#: Image processor settings whose difference is a warning (each ingredient is still scored with its own processor,
#: and the soup ships its lead ingredient's); so are a different processor class with the same settings (a slow and a
#: fast class, `ViTImageProcessor` / `ViTImageProcessorFast`, are the same processor) and a processor shipped by only
#: some ingredients.
MINOR_FIELDS: tuple[str, ...] = ("resample", "do_convert_rgb")


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in sorted(value.items())}
    return value


def _processor_class(config: Mapping[str, Any]) -> str | None:
    name = config.get("image_processor_type") or config.get("feature_extractor_type")
    return str(name).removesuffix("Fast") if name else None


def processor_findings(ref: IngredientMeta, meta: IngredientMeta) -> list[Problem]:
    """Compare `meta`'s image processor settings (its parsed `preprocessor_config.json`) with the reference's, like
    tokenizers are compared: a [`PIXEL_FIELDS`] difference is a problem, a [`MINOR_FIELDS`] difference, another
    processor class or a processor shipped by only one of the two is a warning."""
    if ref.processor is None and meta.processor is None:
        return []
    if ref.processor is None or meta.processor is None:
        who = meta.name if meta.processor is None else ref.name
        return [Problem(meta.name, "image processor", f"only some ingredients ship an image processor ('{who}' has "
                        "no preprocessor_config.json); its settings could not be compared.",
                        "save every ingredient with its image processor (processor.save_pretrained).", "warning")]
    a_cfg, b_cfg = ref.processor, meta.processor
    out = []
    fix = (f"soup only fine-tunes trained on identically preprocessed images: re-save '{meta.name}' with the image "
           "processor it was fine-tuned with if this file is wrong, or remove it.")
    for key in PIXEL_FIELDS + MINOR_FIELDS:
        if key not in a_cfg and key not in b_cfg:
            continue
        a, b = a_cfg.get(key), b_cfg.get(key)
        if _canon(a) == _canon(b):
            continue
        error = key in PIXEL_FIELDS and key in a_cfg and key in b_cfg
        missing = " (unset)" if key not in b_cfg else ""
        note = "" if error else (" Each ingredient is scored with its own processor; the soup ships its "
                                 "highest-weight ingredient's.")
        out.append(Problem(meta.name, f"image processor {key}", f"{b!r}{missing} differs from {a!r} in "
                           f"'{ref.name}'.{note}", fix if error else "none needed if the difference is intended.",
                           "error" if error else "warning"))
    if _processor_class(a_cfg) != _processor_class(b_cfg) and not any(p.severity == "error" for p in out):
        out.append(Problem(meta.name, "image processor class", f"{_processor_class(b_cfg)} differs from "
                           f"{_processor_class(a_cfg)} in '{ref.name}' (the compared settings agree).",
                           "none needed if the difference is intended.", "warning"))
    return out


def compare(metas: Sequence[IngredientMeta], *, align_labels: bool = False) -> CompatibilityReport:
    """Compare ingredients against the first one.

    Checks `model_type`, `architectures`, tensor names, shapes, dtypes (mixed is a warning), `id2label` (the same
    labels in another order is a problem unless `align_labels=True`), `num_labels`, tokenizer identity, image
    processor settings (see [`processor_findings`]) and the declared `base_model`.

    Args:
        metas (`Sequence[IngredientMeta]`):
            The ingredients; the first is the reference.
        align_labels (`bool`, *optional*, defaults to `False`):
            Accept a permuted `id2label`, to be fixed by permuting the classifier rows.

    Returns:
        [`CompatibilityReport`]
    """
    report = CompatibilityReport([m.name for m in metas])
    for meta in metas:
        if meta.tensors is None:
            report.add(Problem(meta.name, "tensors", "its weights are pickled (pytorch_model.bin), so tensor names, "
                               "shapes and dtypes cannot be read before download; they are checked when the weights "
                               "are read.", "none needed.", "warning"))
        for problem in peft_wrapper_problems(meta):
            report.add(problem)
    first_labels = normalize_id2label(metas[0].config) if metas else None
    permuting = align_labels and any(normalize_id2label(m.config) != first_labels for m in metas)
    for meta in metas:
        for problem in label_problems(meta, align_labels=permuting):
            report.add(problem)
    if len(metas) < 2:
        return report
    ref = metas[0]
    ref_labels, ref_n = normalize_id2label(ref.config), _num_labels(ref.config)
    for meta in metas[1:]:
        for key in ("model_type", "architectures"):
            a, b = ref.config.get(key), meta.config.get(key)
            if a != b:
                report.add(Problem(meta.name, key, f"{b!r} differs from {a!r} in '{ref.name}'.",
                                   "soup only fine-tunes of one architecture; remove this ingredient."))
        sizes = _size_differences(ref.config, meta.config)
        if sizes and ref.tensors is not None and meta.tensors is not None:  # one line, not one per tensor
            shapes = sum(1 for n, i in ref.tensors.items() if n in meta.tensors and meta.tensors[n].shape != i.shape)
            others = len(set(ref.tensors) ^ set(meta.tensors))
            detail = f" ({shapes} tensors differ in shape" + (f", {others} exist in only one" if others else "") + ")"
            report.add(Problem(meta.name, "size", f"a different model size: {sizes} in '{ref.name}'{detail}.",
                               "soup only fine-tunes of the same base checkpoint (same size); remove this one."))
        elif sizes:
            report.add(Problem(meta.name, "size", f"a different model size: {sizes} in '{ref.name}'.",
                               "soup only fine-tunes of the same base checkpoint (same size); remove this one."))
        n = _num_labels(meta.config)
        if n != ref_n:
            report.add(Problem(meta.name, "num_labels", f"{n} differs from {ref_n} in '{ref.name}'.",
                               "soup only classifiers trained on the same label set."))
        labels = normalize_id2label(meta.config)
        if labels != ref_labels and labels is not None and ref_labels is not None and n == ref_n:
            same_set = sorted(labels.values()) == sorted(ref_labels.values())
            if same_set and align_labels:
                report.add(Problem(meta.name, "id2label", f"{labels} is a permutation of {ref_labels}; the "
                                   "classifier rows will be permuted to match.", "none needed.", "warning"))
            elif same_set:
                report.add(Problem(meta.name, "id2label", f"{labels} has the same labels as '{ref.name}' "
                                   f"({ref_labels}) in a different order; averaging would mix classes.",
                                   "pass align_labels=True to permute the classifier rows, or re-export it."))
            else:
                report.add(Problem(meta.name, "id2label", f"{labels} differs from {ref_labels} in '{ref.name}'.",
                                   "soup only classifiers trained on the same labels."))
        if (ref.tokenizer_hash and meta.tokenizer_hash and ref.tokenizer_hash != meta.tokenizer_hash
                and not _same_vocabulary(ref, meta)):
            report.add(Problem(meta.name, "tokenizer", f"its tokenizer files differ from '{ref.name}' "
                               f"(sha256 {meta.tokenizer_hash[:12]} vs {ref.tokenizer_hash[:12]}).",
                               "soup only fine-tunes that share one tokenizer (vocabulary)."))
        elif bool(ref.tokenizer_hash) != bool(meta.tokenizer_hash):
            report.add(Problem(meta.name, "tokenizer", "only some ingredients ship tokenizer files; identity "
                               "could not be checked.", "the soup takes the first ingredient's tokenizer.",
                               "warning"))
        for problem in processor_findings(ref, meta):
            report.add(problem)
        if ref.base_model and meta.base_model and set(ref.base_model) != set(meta.base_model):
            report.add(Problem(meta.name, "base_model", f"its card declares base_model {list(meta.base_model)}, "
                               f"'{ref.name}' declares {list(ref.base_model)}.",
                               "soup only fine-tunes of the same pretrained checkpoint."))
    same_size = [m for m in metas if m.tensors is not None and not _size_differences(ref.config, m.config)]
    _tensor_findings(same_size, report)
    _dtype_warnings(metas, report)
    return report


def verdict(metas: Sequence[IngredientMeta], *, align_labels: bool = False) -> CompatibilityReport:
    """The pure verdict on config files and headers ([`compare`]); the architecture check, the remote-code check and
    the adapters' are added by [`hf_soups.preflight.verdict`].

    Args:
        metas (`Sequence[IngredientMeta]`): the ingredients; the first is the reference.
        align_labels (`bool`, *optional*, defaults to `False`): accept a permuted `id2label`.

    Returns:
        [`CompatibilityReport`]
    """
    return compare(metas, align_labels=align_labels)


#: Tensor-name parts that only a model still wrapped by peft saves (`PeftModel` state dicts, or
#: `peft_model.base_model.model.save_pretrained(...)`): the weights are not the merged model's.
_PEFT_WRAPPER_PARTS = frozenset({"modules_to_save", "original_module", "lora_A", "lora_B", "lora_embedding_A",
                                 "lora_embedding_B", "lora_magnitude_vector"})


def peft_wrapper_problems(meta: IngredientMeta) -> list[Problem]:
    """A full model saved with peft's wrapper tensors (`...modules_to_save.default...`, `original_module`, unmerged
    `base_layer` + `lora_A`/`lora_B`): one problem naming a tensor and `merge_and_unload()` as the fix."""
    names = [n for n in (meta.tensors or {}) if _PEFT_WRAPPER_PARTS.intersection(n.split("."))]
    if not names:
        return []
    unmerged = any(".base_layer." in n or ".lora_" in n for n in meta.tensors or {})
    return [Problem(meta.name, "tensors", f"holds {len(names)} tensor(s) of a model still wrapped by peft (e.g. "
                    f"'{sorted(names)[0]}'){': its LoRA deltas are not merged' if unmerged else ''}, so its tensors "
                    "are not the model's.",
                    "merge it with peft's `merge_and_unload()` and save that (`peft_model.merge_and_unload()"
                    ".save_pretrained(dir)`), or save the adapter alone (`peft_model.save_pretrained(dir)`) and soup "
                    "it as an adapter.")]


@dataclass(frozen=True)
class BaseFindings:
    """What [`base_findings`] found on a pretrained base against the ingredients.

    Attributes:
        problems (`list[Problem]`): blocking: a tensor of the ingredients' body that the base lacks or holds in
            another shape, or a base of another `model_type`.
        missing_heads (`tuple[str, ...]`): head tensors (a classifier, a score layer) the ingredients have and the
            base lacks, as a base fine-tuned on no task does. Not a problem by itself: each method that reads the
            base decides (WiSE-FT and Model Stock keep the ingredients' heads there).
    """

    problems: list[Problem] = field(default_factory=list)
    missing_heads: tuple[str, ...] = ()


def base_findings(base: IngredientMeta, metas: Sequence[IngredientMeta]) -> BaseFindings:
    """Does the pretrained `base` have the ingredients' tensor names and shapes? Pure: headers and configs only.

    The ingredients are compared with the first one (the verdict has checked that they agree). Tensors only the base
    holds (a pretraining head) are ignored.

    Args:
        base ([`IngredientMeta`]): the base's config and safetensors header.
        metas (`Sequence[IngredientMeta]`): the ingredients'.

    Returns:
        [`BaseFindings`]
    """
    ref = metas[0]
    found = BaseFindings()
    fix = "pass base=<the checkpoint the ingredients were fine-tuned from> (the repo their cards name as base_model)."
    base_type, ref_type = base.config.get("model_type"), ref.config.get("model_type")
    if base_type != ref_type:
        found.problems.append(Problem(base.name, "model_type", f"the base is a {base_type!r} model, the ingredients "
                                      f"are {ref_type!r}.", fix))
    if base.tensors is None or ref.tensors is None:
        return found
    heads, lacking, reshaped = [], [], []
    for name, info in ref.tensors.items():
        other = base.tensors.get(name)
        if other is None:
            (heads if any(m in name for m in constants.CLASSIFIER_MARKERS) else lacking).append(name)
        elif tuple(other.shape) != tuple(info.shape):
            reshaped.append(f"{name} {list(other.shape)} vs {list(info.shape)}")
    if lacking:
        found.problems.append(Problem(base.name, f"tensor {lacking[0]}", f"the base lacks {len(lacking)} tensor(s) "
                                      f"the ingredients have: {_names(lacking)}.", fix))
    if reshaped:
        found.problems.append(Problem(base.name, f"tensor {reshaped[0].split()[0]}", f"the base holds "
                                      f"{len(reshaped)} tensor(s) in another shape: {_names(reshaped)}.", fix))
    return BaseFindings(found.problems, tuple(heads))


def label_permutations(metas: Sequence[IngredientMeta]) -> list[list[int] | None]:
    """Per ingredient, the classifier row order that aligns its `id2label` with the first one's (`None`: aligned).

    Only meaningful once the verdict accepted the labels as permutations (`align_labels=True`).
    """
    ref = normalize_id2label(metas[0].config)
    perms: list[list[int] | None] = []
    for meta in metas:
        labels = normalize_id2label(meta.config)
        if ref is None or labels is None or labels == ref:
            perms.append(None)
            continue
        index_of = {name: idx for idx, name in labels.items()}
        perms.append([index_of[ref[j]] for j in range(len(ref))])
    return perms


def tied_extras(metas: Sequence[IngredientMeta]) -> dict[str, list[str]]:
    """The tied output embeddings (`lm_head.weight`, `cls.predictions.decoder.weight`, ...) that only some
    ingredients store, per name the ingredients storing them.

    A name counts when every ingredient storing it declares tied word embeddings (`tie_word_embeddings`, true by
    default) and also stores an input embedding of the same shape: `from_pretrained` re-ties the output embedding to
    it after loading, so the stored copy is never used. The soup leaves such a name out (normalised, not refused).
    """
    stored: dict[str, list[IngredientMeta]] = {}
    for meta in metas:
        for name in meta.tensors or {}:
            if _OUTPUT_EMBEDDING.search(name):
                stored.setdefault(name, []).append(meta)
    out = {}
    for name, holders in stored.items():
        if len(holders) == len(metas):
            continue
        if all(m.config.get("tie_word_embeddings", True) is True and _has_input_embedding(m, name) for m in holders):
            out[name] = [m.name for m in holders]
    return out


def _has_input_embedding(meta: IngredientMeta, name: str) -> bool:
    tensors = meta.tensors or {}
    shape = tuple(tensors[name].shape)
    return any(_INPUT_EMBEDDING.search(n) and tuple(i.shape) == shape for n, i in tensors.items())


def _tensor_findings(metas: Sequence[IngredientMeta], report: CompatibilityReport) -> None:
    """Compare tensor names and shapes by majority: the largest group of ingredients that agree (ties: the earliest)
    is the reference, and only the others are blamed. Tied output embeddings stored by some are normalised
    ([`tied_extras`]); legacy buffers saved by some are a warning."""
    if len(metas) < 2:
        return
    tied = tied_extras(metas)
    for name, holders in tied.items():
        for holder in holders:
            report.add(Problem(holder, "tensors", f"also stores '{name}', which its config ties to the input "
                               "embeddings (tie_word_embeddings); from_pretrained re-ties it on load, so the soup "
                               "leaves it out.", "none needed.", "warning"))

    def signature(meta: IngredientMeta) -> frozenset[tuple[str, tuple[int, ...]]]:
        return frozenset((n, tuple(i.shape)) for n, i in (meta.tensors or {}).items()
                         if n not in tied and not constants.is_legacy_buffer(n))

    signatures = [signature(m) for m in metas]
    sizes = Counter(signatures)
    best = max(sizes, key=lambda sig: (sizes[sig], -signatures.index(sig)))
    ref = metas[signatures.index(best)]
    others = sizes[best] - 1
    label = f"'{ref.name}'" + (f" and {others} other ingredient{'s' if others > 1 else ''}" if others else "")
    for meta in metas:
        if meta is not ref:
            _compare_tensors(ref, meta, report, label, skip=tied)


def _compare_tensors(ref: IngredientMeta, meta: IngredientMeta, report: CompatibilityReport, label: str,
                     skip: Mapping[str, Any]) -> None:
    """Blame `meta` for each difference from `ref` (the majority, described by `label`)."""
    if ref.tensors is None or meta.tensors is None:  # pickled weights: names unknown before the download
        return
    missing = [n for n in ref.tensors if n not in meta.tensors and n not in skip]
    extra = [n for n in meta.tensors if n not in ref.tensors and n not in skip]
    legacy = [n for n in missing + extra if constants.is_legacy_buffer(n)]
    if legacy:
        report.add(Problem(meta.name, "tensors", f"legacy buffer(s) {_names(legacy)} saved by only some "
                           "ingredients; transformers ignores them on load, so the soup leaves them out.",
                           "none needed.", "warning"))
        missing = [n for n in missing if n not in legacy]
        extra = [n for n in extra if n not in legacy]
    old_here = [n for n in extra if constants.modern_name(n) != n and constants.modern_name(n) in missing]  # meta: gamma, ref: weight
    new_here = [constants.modern_name(n) for n in missing if constants.modern_name(n) != n and constants.modern_name(n) in extra]  # the reverse
    if old_here or new_here:
        layouts = ["old (gamma/beta)", "modern (weight/bias)"]
        if not old_here:
            layouts.reverse()
        renamed = old_here + new_here
        report.add(Problem(meta.name, "tensors", f"names {len(renamed)} LayerNorm tensor(s) in the {layouts[0]} "
                           f"layout where {label} use{'' if ' and ' in label else 's'} the {layouts[1]} one: "
                           f"{_names(renamed)}. transformers renames gamma/beta on load, but one soup cannot mix "
                           "the two layouts.", "re-save every ingredient with save_pretrained (which writes "
                           "weight/bias), then soup them."))
        gone = set(renamed) | {constants.modern_name(n) for n in old_here} | {n for n in missing if constants.modern_name(n) in new_here}
        missing = [n for n in missing if n not in gone]
        extra = [n for n in extra if n not in gone]
    if missing:
        report.add(Problem(meta.name, "tensors", f"missing {len(missing)} tensor(s) that {label} "
                           f"{'have' if ' and ' in label else 'has'}: {_names(missing)}.",
                           "re-export it with the same architecture and config."))
    if extra:
        report.add(Problem(meta.name, "tensors", f"has {len(extra)} extra tensor(s) that {label} "
                           f"{'lack' if ' and ' in label else 'lacks'}: {_names(extra)}.",
                           "re-export it with the same architecture and config."))
    differ = [(name, info, meta.tensors[name]) for name, info in ref.tensors.items()
              if name in meta.tensors and meta.tensors[name].shape != info.shape]
    if len(differ) > 3:  # summarised: one problem, the first few named
        shown = "; ".join(f"'{n}' {list(o.shape)} vs {list(i.shape)}" for n, i, o in differ[:3])
        report.add(Problem(meta.name, "tensor shapes", f"{len(differ)} tensors differ in shape from {label} "
                           f"({shown}; ...).", "soup only checkpoints of the same size (same config and num_labels)."))
        return
    for name, info, other in differ:
        report.add(Problem(meta.name, f"tensor {name}", f"shape {list(other.shape)} differs from "
                           f"{list(info.shape)} in {label}.",
                           "soup only checkpoints of the same size (same config and num_labels)."))


def _size_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """`"hidden_size 48 vs 32, intermediate_size 64 vs 37"` for the size fields that differ (`b` vs `a`)."""
    diffs = [f"{k} {b.get(k)} vs {a.get(k)}" for k in SIZE_KEYS
             if k in a and k in b and a.get(k) != b.get(k)]
    return ", ".join(diffs)


def _same_vocabulary(a: IngredientMeta, b: IngredientMeta) -> bool:
    """Files differ; the tokenizers are still the same when their vocabularies are (e.g. re-saved by another
    transformers version)."""
    if a.vocabulary is None or b.vocabulary is None:
        return False
    va, vb = a.vocabulary(), b.vocabulary()
    return va is not None and va == vb


def _dtype_warnings(metas: Sequence[IngredientMeta], report: CompatibilityReport) -> None:
    per = []
    for meta in metas:
        counts = Counter(info.dtype for info in (meta.tensors or {}).values() if info.is_float)
        per.append((meta.name, counts.most_common(1)[0][0] if counts else None))
    kinds = {d for _, d in per if d}
    if len(kinds) > 1:
        listing = ", ".join(f"'{n}': {d}" for n, d in per)
        report.add(Problem("(all)", "dtype", f"mixed floating dtypes ({listing}); accumulation is fp32 and the "
                           "output takes the most precise dtype present.",
                           "pass dtype=... to choose the output dtype.", "warning"))


def sample_tensor_names(tensors: Mapping[str, TensorInfo], k: int = 8, max_numel: int = 1_100_000) -> list[str]:
    """A deterministic, evenly spread sample of weight matrices, skipping classifier heads and huge tensors."""
    names = [
        n for n, info in tensors.items()
        if info.is_float and len(info.shape) >= 2 and 0 < info.numel <= max_numel
        and not any(m in n for m in _HEAD_MARKERS)
    ]
    if len(names) <= k:
        return names
    step = len(names) / k
    return [names[int(i * step)] for i in range(k)]


def init_outlier_warnings(names: Sequence[str], dist: Sequence[Sequence[float]], n_tensors: int) -> list[Problem]:
    """The warnings of [`hf_soups.distance.init_distance_warnings`] from a distance matrix: only the outliers are
    blamed."""
    k = len(names)
    if k < 2 or not n_tensors:
        return []
    threshold = constants.INIT_DISTANCE_WARNING
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(k):
        for j in range(i + 1, k):
            if dist[i][j] <= threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(root(i), []).append(i)
    family = max(groups.values(), key=lambda g: (len(g), -g[0]))  # the largest group; ties: the earliest ingredient
    if len(family) < 2:
        closest = min(dist[i][j] for i in range(k) for j in range(i + 1, k))
        return [Problem("(all)", "weights", f"no two ingredients share a pretrained init: the closest pair is at "
                        f"relative L2 distance {closest:.3f} over {n_tensors} sampled tensors (fine-tunes of one "
                        "base sit well below 0.5).", "soup only fine-tunes of the same pretrained checkpoint.",
                        "warning")]
    warnings = []
    for i in range(k):
        if i in family:
            continue
        to_family = sorted(dist[i][j] for j in family)
        median = statistics.median(to_family)
        warnings.append(Problem(names[i], "weights", f"relative L2 distance {median:.3f} to the other "
                                f"ingredients over {n_tensors} sampled tensors (fine-tunes of one base sit well "
                                "below 0.5); it likely does not share their pretrained init.",
                                "soup only fine-tunes of the same pretrained checkpoint; remove this one.",
                                "warning"))
    return warnings
