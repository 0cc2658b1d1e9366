"""Adapter ingredients, wired: find each adapter's base (pulled once, pinned), present the adapter to the verdict and
to the engine as its merged model, and say what about a set of adapters is refused.

The pure layout (config, keys, W + s·B·A per chunk) is [`hf_soups.checkpoint.adapter`]; this module adds the base's
resolution (local or Hub), the verdict's adapter findings and the companion files' source (the base's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os

import torch
from collections.abc import Sequence
from typing import Any

from .checkpoint.adapter import (
    AdapterConfig,
    AdapterLayout,
    AdapterReader,
    adapter_refusals,
    build_layout,
    delta_shape,
    layout_tensors,
    parse_adapter_config,
)
from .checkpoint.format import TensorInfo, parse_header
from .checkpoint.layout import ADAPTER, ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS, FULL_MODEL, is_adapter_listing
from .checkpoint.local import local_meta
from .checkpoint.reader import CheckpointReader, SafetensorsReader, StateDictReader, load_pickled_state, open_checkpoint
from .checkpoint.safe_files import open_inside, read_inside
from .checkpoint.sources import LocalFileSource
from .compat import Problem
from .errors import InvalidArgumentError, NoSafetensorsError
from .refs import Ingredient, IngredientMeta, IngredientRef, local_dir_of

__all__ = ["AdapterSource", "attach_bases", "adapter_meta", "adapter_problems", "open_adapter", "companion_source",
           "is_adapter", "pinned_base"]


@dataclasses.dataclass(frozen=True)
class AdapterSource:
    """What makes an ingredient an adapter: its config, header, layout and its base (resolved, pinned on the Hub)."""

    config: AdapterConfig
    header: dict[str, TensorInfo]
    layout: AdapterLayout
    base: Ingredient


def is_adapter(ing: Ingredient) -> bool:
    return getattr(ing, "adapter", None) is not None


def _listing(ing: Ingredient) -> list[str]:
    if ing.repo_id is not None and ing.files:
        return list(ing.files)
    if ing.local_dir is not None and os.path.isdir(ing.local_dir):
        return os.listdir(ing.local_dir)
    return []


def _read_adapter_files(ing: Ingredient, token: Any, endpoint: str | None, cache_dir: str | None,
                        allow_pickle: bool) -> tuple[AdapterConfig, dict[str, TensorInfo]]:
    found = ADAPTER.find(_listing(ing))
    pickled = found is None or found.pickled
    if pickled and not (allow_pickle and found is not None):
        if found is not None:
            raise NoSafetensorsError(
                "the adapter has no adapter_model.safetensors, only a pickled adapter_model.bin, and loading pickles "
                "can run arbitrary code.", ingredient=ing.name, file=found.file, param="allow_pickle",
                fix="re-save the adapter with peft (`save_pretrained(..., safe_serialization=True)`), or pass "
                    "allow_pickle=True to load it with torch.load(weights_only=True).")
        raise NoSafetensorsError(
            "the adapter has no adapter_model.safetensors (its weights).", ingredient=ing.name,
            fix="point to a folder written by peft's `save_pretrained(...)` (adapter_config.json and "
                "adapter_model.safetensors).")
    if ing.repo_id is not None and ing.local_dir is None:
        from . import hub
        from .hub.stream import read_remote_header

        if pickled:  # a pickle has no header to range-read: the (small) adapter file is downloaded
            local = hub.download(ing, token=token, endpoint=endpoint, cache_dir=cache_dir, allow_pickle=True)
            config = parse_adapter_config(read_inside(local, ADAPTER_CONFIG, ingredient=ing.name), ing.name)
            with _open_adapter_file(local, ing.name, allow_pickle) as reader:
                return config, dict(reader.tensors)
        small = hub.download(ing, token=token, endpoint=endpoint, cache_dir=cache_dir, weights=False)
        config = parse_adapter_config(read_inside(small, ADAPTER_CONFIG, ingredient=ing.name), ing.name)
        header, _ = read_remote_header(ing, ADAPTER_WEIGHTS, token=token, endpoint=endpoint)
        return config, header
    local_dir = local_dir_of(ing)
    config = parse_adapter_config(read_inside(local_dir, ADAPTER_CONFIG, ingredient=ing.name), ing.name)
    with _open_adapter_file(local_dir, ing.name, allow_pickle) as reader:
        return config, dict(reader.tensors)


def _open_adapter_file(directory: str, name: str, allow_pickle: bool = False) -> CheckpointReader:
    """The adapter's weights: adapter_model.safetensors, else (only with `allow_pickle`) adapter_model.bin loaded
    with `torch.load(weights_only=True)`."""
    found = ADAPTER.find(lambda file: os.path.lexists(os.path.join(directory, file)))
    if allow_pickle and (found is None or found.pickled):
        return StateDictReader(load_pickled_state(directory, ADAPTER_PICKLE, name), name, file=ADAPTER_PICKLE)
    fd = open_inside(directory, ADAPTER_WEIGHTS, ingredient=name)
    source = LocalFileSource(os.path.join(directory, ADAPTER_WEIGHTS), name=ADAPTER_WEIGHTS, fd=fd)
    try:
        return SafetensorsReader({ADAPTER_WEIGHTS: source}, None, name)
    except BaseException:
        source.close()
        raise


def attach_bases(ingredients: Sequence[Ingredient], base: str | os.PathLike[str] | None = None, *, token: Any = None,
                 endpoint: str | None = None, cache_dir: str | None = None, allow_pickle: bool = False
                 ) -> list[Ingredient]:
    """Mark each adapter ingredient with its [`AdapterSource`]; each distinct base is resolved (pinned) once.

    Args:
        ingredients (`Sequence[Ingredient]`): resolved ingredients; those that are not adapters pass unchanged.
        base (`str`, *optional*): the base for every adapter (a Hub id, `id@rev` or a directory), instead of each
            adapter's `base_model_name_or_path`.
        allow_pickle (`bool`, *optional*): accept an adapter_model.bin (loaded with `torch.load(weights_only=True)`).

    Raises:
        [`InvalidArgumentError`]: an adapter names no base and `base` is not given, or the base is an adapter.
        [`NoSafetensorsError`], [`CorruptCheckpointError`], [`IngredientNotFoundError`]: as reading any ingredient.
    """
    bases: dict[tuple[str, str | None], Ingredient] = {}
    out = []
    for ing in ingredients:
        if not is_adapter_listing(_listing(ing)):
            out.append(ing)
            continue
        config, header = _read_adapter_files(ing, token, endpoint, cache_dir, allow_pickle)
        ref, revision = (os.fspath(base), None) if base is not None else (config.base_model, config.base_revision)
        if not ref:
            raise InvalidArgumentError("the adapter's adapter_config.json names no base_model_name_or_path.",
                                       ingredient=ing.name, param="base",
                                       fix="pass base=<the base model's repo id or directory>.")
        if (ref, revision) not in bases:
            resolved = _resolve_base(ing, ref, revision, given=base is not None, token=token, endpoint=endpoint,
                                     cache_dir=cache_dir)
            if is_adapter_listing(_listing(resolved)):
                raise InvalidArgumentError(f"the base '{resolved.name}' is itself an adapter.", ingredient=ing.name,
                                           fix="pass base=<the full model the adapter was trained on>.", param="base")
            bases[(ref, revision)] = resolved
        layout = build_layout(config, header, ing.name)
        out.append(dataclasses.replace(ing, adapter=AdapterSource(config, header, layout, bases[(ref, revision)])))
    return out


def pinned_base(ingredients: Sequence[Ingredient]) -> str | None:
    """The adapters' base as a recipe records it: `repo@sha` on the Hub, its directory (as named) locally; `None`
    without adapters. The verdict has checked that every adapter's base is this one (or has identical weights)."""
    for ing in ingredients:
        if is_adapter(ing):
            return ing.adapter.base.name  # type: ignore[attr-defined]
    return None


def adapter_meta(ing: Ingredient, base_meta: IngredientMeta) -> IngredientMeta:
    """The verdict's view of an adapter: its base's config, tokenizer and processor, its merged model's tensors."""
    src: AdapterSource = ing.adapter  # type: ignore[attr-defined]
    tensors = layout_tensors(base_meta.tensors or {}, src.layout, src.header)
    return dataclasses.replace(base_meta, name=ing.name, tensors=tensors,
                               base_model=(src.base.repo_id,) if src.base.repo_id else None)


def base_metas(ingredients: Sequence[Ingredient], read: Any) -> dict[str, IngredientMeta]:
    """Each distinct base's meta, read once with `read(base_ingredient)`."""
    out: dict[str, IngredientMeta] = {}
    for ing in ingredients:
        if is_adapter(ing) and ing.adapter.base.name not in out:  # type: ignore[attr-defined]
            with _about_base(ing, ing.adapter.base.name):  # type: ignore[attr-defined]
                out[ing.adapter.base.name] = read(ing.adapter.base)  # type: ignore[attr-defined]
    return out


@contextlib.contextmanager
def _about_base(ing: Ingredient, base: str, *, given: bool = False) -> Any:
    """A base that cannot be found or read: the error names the adapter whose base it is, and the fix (`base=`).
    An error about a base given as `base=` is the caller's own, and passes unchanged."""
    from .errors import SoupError, _rebuild

    try:
        yield
    except SoupError as e:
        if given or getattr(e, "report", None) is not None:
            raise
        raise _rebuild(type(e), f"its base '{base[:200]}' (its adapter_config.json's base_model_name_or_path) "
                       f"cannot be used: {e.message}", ing.name, e.tensor, e.file,
                       "pass base=<the base model's Hub repo id (repo@sha) or local directory>.", "base") from None


def adapter_problems(ingredients: Sequence[Ingredient], metas: Sequence[IngredientMeta]) -> list[Problem]:
    """The verdict's adapter findings: refused kinds (DoRA, IA3, ...), modules that do not fit the base, adapters of
    different bases (errors); target modules that differ between adapters (a warning: a zero delta there)."""
    problems: list[Problem] = []
    adapters = [(ing, meta) for ing, meta in zip(ingredients, metas) if is_adapter(ing)]
    if not adapters:
        return problems
    for ing, meta in adapters:
        src: AdapterSource = ing.adapter  # type: ignore[attr-defined]
        for field, reason, fix in adapter_refusals(src.config, src.header):
            problems.append(Problem(ing.name, field, reason, fix))
        base_tensors = meta.tensors or {}
        for target, delta in src.layout.deltas.items():
            info = base_tensors.get(target)
            if info is None or tuple(info.shape) != delta_shape(delta, src.header):
                what = "has no tensor" if info is None else f"has shape {list(info.shape)} for"
                problems.append(Problem(ing.name, f"tensor {target}", f"the base '{src.base.name}' {what} this target "
                                        f"module (ΔW is {list(delta_shape(delta, src.header))}).",
                                        "pass base=<the model this adapter was trained on>."))
    first, first_src = adapters[0][0], adapters[0][0].adapter  # type: ignore[attr-defined]
    for ing, _ in adapters[1:]:
        src = ing.adapter  # type: ignore[attr-defined]
        same = same_base(first_src.base, src.base)
        if same is None:
            problems.append(Problem(ing.name, "base", f"adapts '{src.base.name}', and '{first.name}' adapts "
                                    f"'{first_src.base.name}': their weight files cannot be compared (the Hub lists "
                                    "no digest for them), so they may be other weights.",
                                    "if both were trained on one base, pass base=<its repo id@sha or directory>."))
        elif not same:
            problems.append(Problem(ing.name, "base", f"adapts '{src.base.name}', but '{first.name}' adapts "
                                    f"'{first_src.base.name}' (another commit or other weights).",
                                    "soup adapters of one base (pass base=<repo id@sha> if both were trained on it)."))
    modules = {ing.name: set(ing.adapter.layout.deltas) for ing, _ in adapters}  # type: ignore[attr-defined]
    union = set().union(*modules.values())
    for name, mods in modules.items():
        missing = sorted(union - mods)
        if missing:
            problems.append(Problem(name, "target_modules", f"does not adapt {len(missing)} module(s) that others do "
                                    f"({', '.join(m.removesuffix('.weight') for m in missing[:3])}"
                                    f"{', ...' if len(missing) > 3 else ''}); its delta there is zero.",
                                    "none needed.", "warning"))
    return problems


def _resolve_base(ing: Ingredient, ref: str, revision: str | None, *, given: bool, token: Any,
                  endpoint: str | None, cache_dir: str | None) -> Ingredient:
    """The adapter's base, pinned. A base named by a Hub adapter's own config is a Hub repo, never a local path: an
    adapter from the Hub must not make hf_soups read (and a push publish) a directory of this machine. A base that
    cannot be found names the adapter whose config named it, and the fix (`base=`)."""
    with _about_base(ing, ref, given=given):
        if not given and ing.local_dir is None and ing.repo_id is not None:
            parsed = IngredientRef.hub(ref, revision)
        else:
            parsed = IngredientRef.parse(ref, revision)
        if parsed.is_local:
            return Ingredient(ref=parsed.ref, local_dir=parsed.local_dir)
        from . import hub

        return hub.resolve(parsed, token=token, endpoint=endpoint, cache_dir=cache_dir)


def same_base(a: Ingredient, b: Ingredient) -> bool | None:
    """One base: the same Hub commit, the same directory, or weight files with identical digests (a local file's
    sha256 is a Hub LFS file's sha256; its git blob id a regular Hub file's). `None` when the digests cannot be
    compared (a Hub listing without them)."""
    if a.repo_id is not None and b.repo_id is not None and (a.repo_id, a.revision) == (b.repo_id, b.revision):
        return True
    if a.repo_id is None and b.repo_id is None and a.local_dir and b.local_dir and \
            os.path.realpath(a.local_dir) == os.path.realpath(b.local_dir):
        return True
    da, db = _weights_digests(a), _weights_digests(b)
    if set(da) != set(db):
        return False
    if any(not da[f] or not db[f] for f in da):
        return None
    return all(da[f] & db[f] for f in da)


def _weights_digests(ing: Ingredient) -> dict[str, set[str]]:
    """For each weight file of the base, the digests it is known by: `lfs:<sha256>` and/or `git:<blob id>` (empty
    when a Hub listing gives none)."""
    if ing.repo_id is not None and ing.local_dir is None:
        out: dict[str, set[str]] = {}
        for f in ing.files:
            if FULL_MODEL.is_safetensors_weight(f):
                lfs, blob = ing.lfs_sha256.get(f), ing.blob_ids.get(f)
                out[f] = {f"lfs:{lfs}"} if lfs else ({f"git:{blob}"} if blob else set())
        return out
    out = {}
    local_dir = local_dir_of(ing)
    for f in sorted(os.listdir(local_dir)):
        if FULL_MODEL.is_safetensors_weight(f):
            sha256, git = hashlib.sha256(), hashlib.sha1()  # noqa: S324 (git's blob id, not a security digest)
            with os.fdopen(open_inside(local_dir, f), "rb") as fh:
                git.update(f"blob {os.fstat(fh.fileno()).st_size}\0".encode())
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha256.update(block)
                    git.update(block)
            out[f] = {f"lfs:{sha256.hexdigest()}", f"git:{git.hexdigest()}"}
    return out


def open_adapter(ing: Ingredient, open_base: Any, cache: dict[str, Any], stack: contextlib.ExitStack, *,
                 token: Any = None, endpoint: str | None = None, cache_dir: str | None = None,
                 allow_pickle: bool = False) -> tuple[Ingredient, CheckpointReader]:
    """Open an adapter as its merged model. `open_base(base) -> (base with local_dir, reader)` is called once per
    base (kept in `cache`); the adapter's own files are small and always read from disk, closed by `stack`."""
    src: AdapterSource = ing.adapter  # type: ignore[attr-defined]
    if src.base.name not in cache:
        cache[src.base.name] = open_base(src.base)
    base, base_reader = cache[src.base.name]
    local_dir = ing.local_dir
    if local_dir is None:
        from . import hub

        local_dir = hub.download(ing, token=token, endpoint=endpoint, cache_dir=cache_dir, allow_pickle=allow_pickle)
    reader = stack.enter_context(_open_adapter_file(local_dir, ing.name, allow_pickle))
    ing = dataclasses.replace(ing, local_dir=local_dir, adapter=dataclasses.replace(src, base=base))
    return ing, AdapterReader(base_reader, reader, src.layout, ing.name)


def companion_source(ing: Ingredient) -> Ingredient:
    """Where the soup's config, tokenizer and processor files come from: the base, for an adapter."""
    return ing.adapter.base if is_adapter(ing) else ing  # type: ignore[attr-defined]



def export_adapter(ingredients: Sequence[Ingredient], readers: Sequence[CheckpointReader], weights: Sequence[float],
                   rank: int, directory: str) -> dict[str, Any]:
    """Write the soup as one LoRA adapter of rank `rank`: per target module, the truncated SVD of the souped
    ΔW = Σ wₖ·sₖ·Bₖ·Aₖ (a module an adapter does not target adds zero); `modules_to_save` tensors are souped as
    they are. Writes `adapter_config.json` and `adapter_model.safetensors` (peft's layout: `lora_alpha = r`, so the
    scale is 1).

    Returns:
        `dict`: `{"rank", "errors": {module: relative Frobenius error}, "worst": (module, error), "exact"}`.

    Raises:
        [`InvalidArgumentError`]: an ingredient is not an adapter (a full fine-tune's ΔW is not low-rank).
    """
    import json

    from safetensors.torch import save_file

    from .checkpoint.adapter import factorise

    if not all(is_adapter(i) for i in ingredients):
        full = next(i.name for i in ingredients if not is_adapter(i))
        raise InvalidArgumentError(f"as_adapter=<rank> needs every ingredient to be a LoRA adapter; '{full}' is a full "
                                   "model, whose weight delta is not low-rank.",
                                   fix="drop as_adapter= (the soup is then a full model), or soup adapters only.",
                                   param="as_adapter")
    sources: list[AdapterSource] = [i.adapter for i in ingredients]  # type: ignore[attr-defined]
    targets = sorted(set().union(*(s.layout.deltas for s in sources)))
    replaced = sorted(set().union(*(s.layout.replaced for s in sources)))
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    embedding: set[str] = set()
    for target in targets:
        factors = []
        for w, src, reader in zip(weights, sources, readers):
            delta = src.layout.deltas.get(target)
            if delta is None or w == 0:
                continue
            a, b = reader.adapter.read(delta.a_key).double(), reader.adapter.read(delta.b_key).double()
            factors.append((b * (w * delta.scaling), a))
            if "embedding" in delta.a_key:
                embedding.add(target)
        module = target.removesuffix(".weight")
        if not factors:
            continue
        b, a, errors[module] = factorise(factors, rank)
        kind = "lora_embedding_" if target in embedding else "lora_"
        suffix = "" if target in embedding else ".weight"
        tensors[f"base_model.model.{module}.{kind}A{suffix}"] = a.float().contiguous()
        tensors[f"base_model.model.{module}.{kind}B{suffix}"] = b.float().contiguous()
    for name in replaced:
        souped = sum(w * r.read(name).double() for w, r in zip(weights, readers) if w)
        tensors[f"base_model.model.{name}"] = souped.to(readers[0].tensors[name].torch_dtype).contiguous()
    save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    first = sources[0]
    config = dict(first.config.raw)
    base = first.base
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
                  target_modules=sorted(errors), base_model_name_or_path=base.repo_id or base.local_dir,
                  revision=base.revision, use_dora=False, lora_bias=False, bias="none",
                  modules_to_save=sorted({m for s in sources for m in s.config.modules_to_save}) or None)
    with open(os.path.join(directory, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    worst = max(errors.items(), key=lambda kv: kv[1]) if errors else ("", 0.0)
    return {"rank": rank, "errors": errors, "worst": worst, "exact": worst[1] <= 1e-6}
