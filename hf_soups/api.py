"""The one module that wires the Hub to the math: resolve -> preflight -> fetch -> plan -> merge -> card."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from . import adapters
from .checkpoint.companions import config_dtype, copy_companion_files, lead_index
from .checkpoint.reader import CheckpointReader, open_checkpoint
from .checkpoint.writer import AtomicDirectory
from .compat import (
    CompatibilityReport,
    label_permutations,
    normalize_id2label,
    sample_tensor_names,
)
from .distance import init_distance_warnings
from .base import pin_base, shared_base_model
from .errors import InvalidArgumentError, UnknownArgumentError
from .hub.access import HubAccess
from .merge import MergeOptions, build_plan, merge_to_directory, normalize_weights
from .merge.plan import MergePlan
from .metas import read_metas
from .options import guard_keywords, resolve_options
from .preflight import Preflight, preflight, verdict
from .recipes import EvalSpec, MethodContext, MethodResult, Recipe, get_method
from .recipes.protocol import as_result, statistics_pass
from .refs import Ingredient, IngredientMeta, IngredientRef, local_dir_of
from .guards import check_ingredient_set
from .soup import Soup, facts_of
from .validation import (
    validate_dtype,
    validate_int_rule,
    validate_max_shard_size,
    validate_weights,
)

__all__ = ["soup_from_hub", "check_compatibility", "load_recipe", "replay_recipe", "Method"]

logger = logging.getLogger(__name__)

#: The registered soup method names (see `hf_soups.recipes.METHODS`).
Method = str
RefLike = str | os.PathLike | IngredientRef



def _resolve_all(refs: Sequence[RefLike], revision: str | Sequence[str | None] | None, access: HubAccess,
                 base: str | os.PathLike[str] | None = None, allow_pickle: bool = False) -> list[Ingredient]:
    refs = getattr(refs, "refs", refs)  # a CandidateSet from find_ingredients, or any object with pinned `.refs`
    if isinstance(refs, (str, os.PathLike)):
        refs = [refs]
    if not refs:
        raise InvalidArgumentError("no ingredients given.", fix="pass a list of repo ids or checkpoint directories.",
                                   param="refs")
    revisions = [revision] * len(refs) if revision is None or isinstance(revision, str) else list(revision)
    if len(revisions) != len(refs):
        raise InvalidArgumentError(f"got {len(revisions)} revisions for {len(refs)} ingredients.",
                                   fix="pass one revision per ingredient, or a single branch/tag name for all.",
                                   param="revision")
    parsed = [IngredientRef.parse(r, rev) for r, rev in zip(refs, revisions)]
    if all(p.is_local for p in parsed):
        resolved = [Ingredient(ref=p.ref, local_dir=p.local_dir) for p in parsed]
    else:
        resolved = [access.resolve(p) for p in parsed]
    return adapters.attach_bases(resolved, base, allow_pickle=allow_pickle, **access.kwargs)


def _local_dirs(refs: Sequence[RefLike] | RefLike) -> list[str]:
    """The local ingredient directories among `refs` (no I/O beyond `isdir`), which an output may never replace."""
    if isinstance(refs, (str, os.PathLike, IngredientRef)):
        refs = [refs]
    dirs = []
    for r in refs:
        local = r.local_dir if isinstance(r, IngredientRef) else (
            os.fspath(r) if isinstance(r, (str, os.PathLike)) and os.path.isdir(os.fspath(r)) else None)
        if local:
            dirs.append(local)
    return dirs


def _open_readers(ingredients: Sequence[Ingredient], *, stream: bool, access: HubAccess, allow_pickle: bool,
                  stack: contextlib.ExitStack
                  ) -> tuple[list[Ingredient], list[CheckpointReader]]:
    """Fetch what each ingredient needs and open its weights; returns the ingredients with their `local_dir` set
    (new values) and one reader each, closed by `stack`."""
    opened: list[Ingredient] = []
    readers: list[CheckpointReader] = []
    bases: dict[str, Any] = {}

    def open_base(base: Ingredient) -> tuple[Ingredient, CheckpointReader]:
        (base,), (reader,) = _open_readers([base], stream=stream, access=access, allow_pickle=allow_pickle,
                                           stack=stack)
        return base, reader

    for ing in ingredients:
        if adapters.is_adapter(ing):
            ing, reader = adapters.open_adapter(ing, open_base, bases, stack, allow_pickle=allow_pickle,
                                                **access.kwargs)
        elif ing.repo_id is not None and ing.local_dir is None:
            local_dir = access.download(ing, weights=not stream, allow_pickle=allow_pickle)
            ing = dataclasses.replace(ing, local_dir=local_dir)
            if stream:
                reader = access.open_stream(ing, snapshot_dir=local_dir)
            else:
                reader = open_checkpoint(local_dir, ingredient=ing.name, allow_pickle=allow_pickle)
        else:
            reader = open_checkpoint(local_dir_of(ing), ingredient=ing.name, allow_pickle=allow_pickle)
        opened.append(ing)
        readers.append(stack.enter_context(reader))
    return opened, readers


def check_compatibility(
    refs: Sequence[RefLike],
    *,
    revision: str | Sequence[str | None] | None = None,
    token: str | bool | None = None,
    align_labels: bool = False,
    weight_check: bool = True,
    arch_check: bool = True,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    endpoint: str | None = None,
    cache_dir: str | None = None,
    base: str | os.PathLike[str] | None = None,
) -> CompatibilityReport:
    """Decide whether ingredients can be souped, before any weight is downloaded.

    Compares `model_type`, `architectures`, tensor names, shapes and dtypes (from safetensors headers),
    `id2label`, `num_labels`, tokenizer identity and declared `base_model`. With `weight_check=True`, a cheap
    weight-space test (relative L2 distance on a few sampled tensors: read locally, or by HTTP range requests for Hub
    ingredients, a few MB at most) flags the ingredients that do not share the others' pretrained init, as warnings;
    `report.weight_check` says what it read, or why it was skipped.

    Args:
        refs (`Sequence[str]`):
            Hub repo ids (`"user/model"`, `"user/model@rev"`) or local checkpoint directories.
        revision (`str` or `Sequence[str | None]`, *optional*):
            Revision for references without their own `@rev`: one for all, or one per reference.
        token (`str` or `bool`, *optional*):
            Hub token for private repos.
        align_labels (`bool`, *optional*, defaults to `False`):
            Accept `id2label` permutations (the soup then permutes the classifier rows).
        weight_check (`bool`, *optional*, defaults to `True`):
            Run the weight-space init check (on disk, or by range requests on the Hub).
        arch_check (`bool`, *optional*, defaults to `True`):
            Build each config's model under `accelerate.init_empty_weights()` (no memory) and check that the
            checkpoint holds exactly the tensors it expects (catches renamed or missing tensors).
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept `pytorch_model.bin` ingredients (read with `torch.load(weights_only=True)`).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Accept configs with `auto_map`; without it they are a problem in the verdict, as the soup refuses them.
        endpoint, cache_dir (`str`, *optional*):
            Hub endpoint and cache directory.
        base (`str`, *optional*):
            The base model of LoRA adapter ingredients, instead of each adapter's `base_model_name_or_path`.

    Returns:
        [`CompatibilityReport`]: `.compatible`, `.problems` (each naming the ingredient, field or tensor, and the
        fix) and `.warnings`.

    Raises:
        [`IngredientNotFoundError`], [`AuthenticationError`], [`NoSafetensorsError`], [`CorruptCheckpointError`]:
            when an ingredient cannot be read at all.
        [`InvalidArgumentError`]: the same ingredient is named twice.

    Example:
        ```python
        >>> from hf_soups import check_compatibility
        >>> report = check_compatibility(["user/ft-lr1e-4", "user/ft-lr2e-4"])
        >>> report.compatible
        True
        ```
    """
    access = HubAccess.from_args(endpoint=endpoint, token=token, cache_dir=cache_dir)
    ingredients = _resolve_all(refs, revision, access, base, allow_pickle)
    check_ingredient_set(ingredients, allow_single=True)  # one checkpoint can be checked; the same one twice cannot
    metas = read_metas(ingredients, access, allow_pickle)
    report = verdict(metas, align_labels=align_labels, arch_check=arch_check, trust_remote_code=trust_remote_code,
                     ingredients=ingredients)
    report.weight_check = _sampled_weight_check(ingredients, metas, report, enabled=weight_check, access=access,
                                                allow_pickle=allow_pickle)
    return report


#: The weight-space check on Hub ingredients reads this many tensors of at most `_HUB_SAMPLE_NUMEL` elements each,
#: by HTTP range requests (a few MB per ingredient at most).
_HUB_SAMPLE_TENSORS = 4
_HUB_SAMPLE_NUMEL = 300_000


def _sampled_weight_check(ingredients: Sequence[Ingredient], metas: Sequence[IngredientMeta],
                          report: CompatibilityReport, *, enabled: bool, access: HubAccess,
                          allow_pickle: bool) -> str:
    """Run the weight-space init check on a small sample of tensors (local reads, or HTTP range requests for Hub
    ingredients), add its warnings to `report`, and say what it did or why it was skipped."""
    if not enabled:
        return "skipped (weight_check=False)."
    if len(ingredients) < 2:
        return "skipped (one ingredient: nothing to compare it with)."
    if not report.compatible:
        return "skipped (the verdict already found blocking problems)."
    if any(m.tensors is None for m in metas):
        return "skipped (pickled weights cannot be sampled before they are downloaded)."
    if any(adapters.is_adapter(i) for i in ingredients):
        return "skipped (adapters: the soup checks their merged weights when it reads them)."
    on_hub = [i for i in ingredients if i.local_dir is None]
    lead_tensors = metas[0].tensors or {}  # not None: checked just above
    sample = (sample_tensor_names(lead_tensors, k=_HUB_SAMPLE_TENSORS, max_numel=_HUB_SAMPLE_NUMEL) if on_hub
              else sample_tensor_names(lead_tensors))
    if not sample:
        return "skipped (no weight matrix small enough to sample)."
    with contextlib.ExitStack() as stack:
        readers: list[CheckpointReader] = []
        for ing in ingredients:
            if ing.local_dir is not None:
                reader = open_checkpoint(ing.local_dir, ingredient=ing.name, allow_pickle=allow_pickle)
            else:
                small = (access.download(ing, weights=False)
                         if "model.safetensors.index.json" in ing.files else None)  # the shard index, when sharded
                reader = access.open_stream(ing, snapshot_dir=small, window=1)
            readers.append(stack.enter_context(reader))
        warnings, dist = init_distance_warnings([m.name for m in metas], readers, sample)
    report.warnings.extend(warnings)
    nbytes = sum(metas[0].tensors[n].nbytes for n in sample)
    how = (f"{len(sample)} sampled tensors ({nbytes / 1e6:.2f} MB per ingredient"
           + (f", read by HTTP range requests for {len(on_hub)} Hub ingredient(s))" if on_hub else ")"))
    largest = max(dist[i][j] for i in range(len(dist)) for j in range(i + 1, len(dist)))
    if warnings:
        return f"ran on {how}: {len(warnings)} warning(s) below (largest relative L2 distance {largest:.3f})."
    return f"ran on {how}: all ingredients share one init (largest relative L2 distance {largest:.3f})."


def _from_collection(refs: Any, collection: str, **kwargs: Any) -> Any:
    """`soup_from_hub(collection=...)`: the compatible models of a Hub collection, found by [`find_ingredients`]."""
    if refs is not None:
        raise InvalidArgumentError("refs and collection= were both given.",
                                   fix="pass either the refs or collection=, not both.", param="collection")
    from .hub.discovery import find_ingredients

    found = find_ingredients(collection=collection, **kwargs)
    for c in found.rejected:
        logger.warning("collection %s: %s@%s left out: %s", collection, c.repo_id, c.sha, c.reason)
    return found


@guard_keywords
def soup_from_hub(
    refs: Sequence[RefLike] | Any = None,
    method: str = "uniform",
    weights: Sequence[float] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str | Sequence[str | None] | None = None,
    access: HubAccess | None = None,
    eval_dataset: Any = None,
    eval_spec: EvalSpec | None = None,
    merge_options: MergeOptions | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    allow_single: bool = False,
    collection: str | None = None,
    base: str | os.PathLike[str] | None = None,
    as_adapter: int | None = None,
) -> Soup:
    """Make a model soup from fine-tuned checkpoints on the Hub (or on disk).

    Each reference is pinned to a commit sha, the compatibility verdict runs on config files and safetensors
    headers before any weight is downloaded, then the soup is computed tensor by tensor in fp32 with bounded memory
    and written atomically as sharded safetensors with config, tokenizer files and a model card.

    Each setting has one name: evaluation settings are [`EvalSpec`] fields, merge settings [`MergeOptions`] fields,
    the Hub endpoint, token and cache one [`HubAccess`]. Any other keyword raises [`UnknownArgumentError`] (a
    `TypeError`) naming the right one: `split="validation"` says `eval_spec=EvalSpec(split=...)`.

    Args:
        refs (`Sequence[str]` or [`CandidateSet`]):
            Repo ids (`"user/ft-1"`, `"user/ft-2@v1"`) or local checkpoint directories, all fine-tuned from one base;
            or any object with a `.refs` sequence of such strings, e.g. the result of [`find_ingredients`] (the
            card then records how they were found).
        method (`str`, *optional*, defaults to `"uniform"`):
            A registered method (`hf_soups.recipes.METHODS`): `"uniform"` (mean), `"weighted"` (`weights`,
            normalised to sum to 1), `"greedy"` or `"learned"` (both need held-out data).
        weights (`Sequence[float]`, *optional*):
            One weight per ingredient, for `method="weighted"` (with any other method they are an error).
        output_dir (`str`, *optional*):
            Where to write the soup; a new temporary directory when omitted. Must be absent or empty unless
            `overwrite=True`. If it changes during the run, [`OutputExistsError`] is raised and the new soup is kept
            next to it as `<output_dir>.hf-soups-new-<timestamp>`.
        revision (`str` or `Sequence[str | None]`, *optional*):
            Revision for references without their own `@rev`: one for all, or one per reference.
        access ([`HubAccess`], *optional*):
            The Hub endpoint (defaults to `HF_ENDPOINT`), token (never logged or stored) and cache directory.
        eval_dataset (`datasets.Dataset`, `DatasetDict`, `pandas.DataFrame`, `dict` or `str`, *optional*):
            The held-out data itself, for greedy and learned soups: a `Dataset`, a `DatasetDict` (the split is
            `eval_spec.split`), an `IterableDataset` (its first `eval_spec.max_samples` examples), a pandas
            DataFrame, a dict of lists, a csv/json/parquet file, a `save_to_disk` directory, an imagefolder or a Hub
            dataset id (loaded with `eval_spec.split`); every form [`as_eval_dataset`] reads. It stays a top-level
            argument because it is data, often in memory, that a recipe cannot hold; [`EvalSpec`] holds the
            settings, and `EvalSpec.dataset` the recordable name (a file or Hub id), used when this is omitted.
            Its columns, label values and label names are checked against the ingredients' config before any
            weight is downloaded.
        eval_spec ([`EvalSpec`], *optional*):
            Every evaluation setting (split, columns, metric, `strict`, batch size, learned steps, offloading).
        merge_options ([`MergeOptions`], *optional*):
            How the soup is computed and written (dtype, integer rule, label alignment, shard size, device,
            streaming, checks, progress bars).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a soup hf_soups wrote earlier at `output_dir` (recognised by its `.hf_soups` marker). Any other
            non-empty directory, an ingredient, the Hub cache, the home or current directory are never replaced.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Accept configs with `auto_map` (code from the repository), also when evaluating candidates.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept `pytorch_model.bin` ingredients, read only with `torch.load(weights_only=True)`.
        allow_single (`bool`, *optional*, defaults to `False`):
            Accept a single ingredient (a "soup" identical to it, for testing pipelines). Two or more are required
            otherwise, and the same ingredient twice (same repo and commit, or same directory) is always refused.
        collection (`str`, *optional*):
            A Hub collection slug (`"user/my-sweep-64f9a55bb3115b4f513ec026"`) instead of `refs`: its models are
            checked by [`find_ingredients`] (headers only), the compatible ones are souped, each rejected one is
            logged with its reason, and the card records the collection and the date.
        base (`str`, *optional*):
            The pretrained checkpoint the ingredients were fine-tuned from (a Hub id, `id@rev` or a directory). It
            is resolved to a commit sha like the ingredients, checked against their tensor names and shapes from
            headers (a head the base lacks is a warning), and recorded as `repo@sha` in the recipe and as the
            card's `base_model`. For LoRA adapters it replaces each adapter's `base_model_name_or_path`. When
            omitted, a method that needs the base reads the ingredients' agreed `base_model` card metadata; a
            uniform soup never downloads a base.
        as_adapter (`int`, *optional*):
            Write the soup of LoRA adapters as one LoRA adapter of this rank (the truncated SVD of the souped ΔW
            per module) instead of a full model; `soup.adapter_export` and the card report the relative Frobenius
            error per module and the worst.

    Returns:
        [`Soup`]: with `.output_dir`, `.method`, `.ingredients` (pinned `.revision`, `.weight`), a lazy `.model`,
        `.card`, `.save_pretrained()` and `.push_to_hub()`.

    Raises:
        [`IncompatibleIngredientsError`]: the verdict is negative (its `.report` lists every problem), or the base
            lacks a tensor of the ingredients' body.
        [`IngredientNotFoundError`], [`RevisionNotFoundError`], [`AuthenticationError`]: a reference cannot be resolved.
        [`NoSafetensorsError`], [`UnsafeCheckpointError`], [`CorruptCheckpointError`]: an ingredient cannot be read
            safely.
        [`NonFiniteTensorError`]: an ingredient holds NaN/Inf.
        [`OutputExistsError`], [`OutputNotWritableError`], [`DiskFullError`]: the output cannot be written (checked
            before any download); nothing partial is left, and nothing hf_soups did not write is ever replaced.
        [`RecipeError`]: `method` is not registered (the message names the closest one).
        [`InvalidArgumentError`]: fewer than two ingredients, one ingredient twice, weights that do not fit the
            method, or a held-out method without data (all raised before any weight is downloaded).
        [`UnknownArgumentError`]: a keyword this function does not take (the message names the right one).
        [`EvaluationError`], [`LabelMismatchError`]: the held-out data lacks a column or its labels do not match
            the ingredients' `id2label` (raised before any weight is downloaded).

    Example:
        ```python
        >>> from hf_soups import EvalSpec, MergeOptions, soup_from_hub
        >>> soup = soup_from_hub(["user/ft-1", "user/ft-2"], output_dir="soup")
        >>> soup.ingredients[0].revision  # pinned commit sha
        '5f0c...'
        >>> greedy = soup_from_hub(["user/ft-1", "user/ft-2", "user/ft-3"], "greedy", eval_dataset="val.csv",
        ...                        eval_spec=EvalSpec(text_column="sentence"),
        ...                        merge_options=MergeOptions(dtype="bfloat16"))
        >>> soup.push_to_hub("user/my-soup")
        ```
    """
    spec, options = resolve_options(eval_spec, merge_options, eval_dataset)
    if access is None:
        access = HubAccess()
    elif not isinstance(access, HubAccess):
        raise UnknownArgumentError(f"access must be a HubAccess, got {type(access).__name__}.", param="access",
                                   fix="pass access=HubAccess(endpoint=..., token=..., cache_dir=...).")
    cache_dir = access.cache_dir
    if collection is not None:
        refs = _from_collection(refs, collection, progress=options.progress, **access.kwargs)
    if refs is None:
        raise InvalidArgumentError("no ingredients were given.", fix="pass refs=[\"user/ft-1\", \"user/ft-2\"], the "
                                   "result of find_ingredients(...), or collection=\"user/slug\".", param="refs")
    discovery = getattr(refs, "discovery", None)  # how a CandidateSet was found, recorded in the card
    refs = getattr(refs, "refs", refs)  # a discovery result (CandidateSet) passes through as its pinned refs
    # every argument is validated before anything is read or downloaded
    if weights is not None:
        weights = validate_weights(weights, 1 if isinstance(refs, (str, os.PathLike, IngredientRef)) else len(refs))
    options = dataclasses.replace(options, dtype=validate_dtype(options.dtype),
                                  int_rule=validate_int_rule(options.int_rule),  # type: ignore[arg-type]
                                  max_shard_size=validate_max_shard_size(options.max_shard_size))
    entry = get_method(method)
    if entry.user_weights and weights is None:
        raise InvalidArgumentError(f"method={method!r} needs weights.",
                                   fix="pass weights=[...] with one weight per ingredient.", param="weights")
    if not entry.user_weights and weights is not None:
        raise InvalidArgumentError(f"method={method!r} chooses the weights itself, so weights= would be ignored.",
                                   fix="pass method='weighted' to apply your weights, or drop weights=.",
                                   param="weights")
    if entry.needs_eval and eval_dataset is None and spec.dataset is None:
        raise InvalidArgumentError(f"method={method!r} needs held-out data.",
                                   fix="pass eval_dataset=<datasets.Dataset or file>, or "
                                       "eval_spec=EvalSpec(dataset=...).", param="eval_dataset")
    if as_adapter is not None and (isinstance(as_adapter, bool) or not isinstance(as_adapter, int) or as_adapter < 1):
        raise InvalidArgumentError(f"as_adapter is the rank of the adapter written, a positive integer; got "
                                   f"{as_adapter!r}.", fix="pass as_adapter=8 (say), or omit it for a full model.",
                                   param="as_adapter")
    output = None
    if output_dir is not None:  # fail fast, before any download; the commit re-checks against this very state
        output = AtomicDirectory(output_dir, overwrite=overwrite, ingredients=_local_dirs(refs),
                                 caches=[cache_dir or ""])
    eval_data = None
    if eval_dataset is not None or (entry.needs_eval and spec.dataset is not None):  # loaded (not checked) up front
        from .evaluation.data import as_eval_dataset

        eval_data = as_eval_dataset(eval_dataset if eval_dataset is not None else spec.dataset, spec.split,
                                    max_samples=spec.max_samples)
    ingredients = _resolve_all(refs, revision, access, base, allow_pickle)
    check_ingredient_set(ingredients, allow_single=allow_single)
    if weights is not None and len(weights) != len(ingredients):
        raise InvalidArgumentError(f"got {len(weights)} weights for {len(ingredients)} ingredients.",
                                   fix="pass one weight per ingredient.", param="weights")
    metas = read_metas(ingredients, access, allow_pickle)
    checked = preflight(ingredients, metas, trust_remote_code=trust_remote_code, align_labels=options.align_labels,
                        arch_check=options.arch_check, needs_eval=entry.needs_eval, eval_data=eval_data, spec=spec)
    pinned_base = None
    if not any(adapters.is_adapter(i) for i in ingredients):  # adapters pinned theirs in _resolve_all
        pinned_base = pin_base(base, checked.metas, checked.report, access, needed=entry.needs.base,
                               allow_pickle=allow_pickle)
    return _brew(ingredients, checked, entry.name, weights, output_dir, output, access=access,
                 eval_dataset=eval_dataset, eval_data=eval_data, spec=spec,
                 options=options, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, discovery=discovery,
                 as_adapter=as_adapter, base=pinned_base, base_input=pinned_base if entry.needs.base else None)


def _brew(ingredients: list[Ingredient], checked: Preflight, method: str, weights: Sequence[float] | None,
          output_dir: str | os.PathLike[str] | None, output: AtomicDirectory | None,
          *, access: HubAccess, eval_dataset: Any, spec: EvalSpec,
          options: MergeOptions, trust_remote_code: bool, allow_pickle: bool, recipe: Recipe | None = None,
          discovery: Any = None, eval_data: Any = None, calibration: Any = None, as_adapter: int | None = None,
          base: Ingredient | None = None, base_input: Ingredient | None = None) -> Soup:
    """readers -> plan -> weights (registry) -> one atomic commit of weights, companion files and card -> `Soup`.

    With `recipe` (a replay), the soup carries that recipe and its method label, and the card written inside the
    commit is the recipe's; a recorded BatchNorm recalibration is replayed on `calibration` inside the commit.
    With `as_adapter` (a rank), the soup of LoRA adapters is written as one adapter of that rank. With `base_input`
    (the pinned base, for a method that `Needs(base=True)`), the base is the plan's last input.
    """
    metas, report, tied = checked.metas, checked.report, checked.tied
    entry = get_method(method)
    if entry.needs_eval or eval_dataset is not None:  # the task's default metric and threshold, for the recipe
        from .evaluation.tasks import settle_spec

        spec = settle_spec(spec, metas[0].config)
    with contextlib.ExitStack() as stack:
        ingredients, readers = _open_readers(ingredients, stream=options.stream, access=access,
                                             allow_pickle=allow_pickle, stack=stack)
        tensor_maps = [r.tensors for r in readers]
        if tied:  # stored by some only, re-tied on load: left out of the soup
            tensor_maps = [{n: i for n, i in m.items() if n not in tied} for m in tensor_maps]
        if len(readers) > 1:
            warnings, _ = init_distance_warnings([i.name for i in ingredients], readers,
                                                 sample_tensor_names(tensor_maps[0]))
            for w in warnings:
                logger.warning("%s", w)
            report.warnings.extend(warnings)
        perms = label_permutations(metas) if options.align_labels else None
        num_labels = len(normalize_id2label(metas[0].config) or {}) or None
        names = [i.name for i in ingredients]
        plan = build_plan(tensor_maps, [1.0] * len(readers), names=names, dtype=options.dtype,
                          int_rule=options.int_rule, label_permutations=perms, num_labels=num_labels,
                          check_finite=options.check_finite)
        inputs = list(readers)  # the plan's inputs: the ingredients, then the base when the method takes it
        if base_input is not None:
            (base_input,), (base_reader,) = _open_readers([base_input], stream=options.stream, access=access,
                                                          allow_pickle=allow_pickle, stack=stack)
            plan, inputs = plan.with_base(), [*inputs, base_reader]
        if recipe is not None:  # a replay: the recorded plan, applied as it is (the method is not re-run)
            plan = plan.with_weights(recipe.weights).with_overrides(recipe.tensors)
            result = MethodResult(plan, parameters=dict(recipe.parameters or {}))
        else:
            workdir = tempfile.mkdtemp(prefix="hf-soups-method-")  # the method's private files, removed after
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            ctx = MethodContext(names=tuple(names), plan=plan, readers=inputs, base=inputs[-1] if plan.base else None,
                                weights=tuple(normalize_weights(weights)) if weights is not None else None,
                                statistics=statistics_pass(plan, inputs) if entry.needs.statistics else None,
                                workdir=workdir)
            if entry.needs_eval:
                from .evaluation import held_out

                # an adapter is evaluated with its base's tokenizer, processor and config (its merged model's)
                evaluated = [dataclasses.replace(i, local_dir=adapters.companion_source(i).local_dir)
                             for i in ingredients]
                chosen = held_out.choose_weights(entry, ctx, evaluated, metas[0].config, eval_data, spec,
                                                 trust_remote_code=trust_remote_code, progress=options.progress)
                result = MethodResult(chosen.plan, chosen.trace, chosen.scores, chosen.warnings, chosen.parameters,
                                      chosen.inputs)
            else:
                result = as_result(entry.fn(ctx), method)
        plan, trace, scores, held_out_warnings = result.plan, result.trace, result.scores, result.warnings
        for directory in result.inputs:  # a method's private inputs (precomputed tensors), read like the others
            inputs.append(stack.enter_context(open_checkpoint(directory, ingredient=f"{method} (precomputed)")))
        if as_adapter is not None and (plan.base or plan.overrides()):
            raise InvalidArgumentError(f"method={method!r} weighs tensors one by one; a soup written as an adapter "
                                       "takes one weight per ingredient.", fix="drop as_adapter=.",
                                       param="as_adapter")
        ingredients = [dataclasses.replace(ing, weight=w, score=scores.get(ing.name))
                       for ing, w in zip(ingredients, plan.weights)]
        target = os.path.expanduser(os.fspath(output_dir)) if output_dir is not None else os.path.join(
            tempfile.mkdtemp(prefix="hf-soup-"), "soup")
        recorded_base = base_input if base_input is not None else base  # the pinned base, when there is one
        if recipe is None:
            recipe = Recipe(
                method=method, ingredients=tuple(names), weights=plan.weights, dtype=options.dtype_name,
                int_rule=options.int_rule, align_labels=options.align_labels,
                evaluation=spec if entry.needs_eval or eval_dataset is not None else None,
                base=recorded_base.name if recorded_base is not None else adapters.pinned_base(ingredients),
                as_adapter=as_adapter, tensors=tuple(_public_overrides(plan)),
                parameters={**result.parameters, "replay": "rerun"} if plan.private else result.parameters or None,
                base_input=plan.base,
            )
        made = dict(output_dir=target, method=recipe.method, ingredients=ingredients, recipe=recipe, report=report,
                    trace=trace, scores=scores,
                    base_model=shared_base_model(metas) if recorded_base is None else
                    recorded_base.repo_id or recorded_base.name,
                    pinned_base=recorded_base, access=access,  # WiSE-FT's default base in Soup.evaluate
                    metric=spec.metric_name, metric_fn=None if spec.metric_replayable else spec.metric,
                    trust_remote_code=trust_remote_code, discovery=discovery,
                    warnings=held_out_warnings, card_metadata=_agreed_card_metadata(ingredients))
        from .evaluation.distributed import is_main_process, wait_for_everyone

        soup = None
        if is_main_process():  # under `accelerate launch`, only the main process merges and writes
            with output if output is not None else AtomicDirectory(target) as tmp:
                export = None
                if as_adapter is not None:
                    export = adapters.export_adapter(ingredients, readers, plan.weights, as_adapter, tmp)
                else:
                    merge_to_directory(plan, inputs, tmp, max_shard_size=options.max_shard_size, names=names,
                                       progress=options.progress, device=options.device)
                checked.settle()  # an architecture error voids the soup before the card and the commit
                first = adapters.companion_source(ingredients[0])  # an adapter's config and tokenizer: its base's
                lead = adapters.companion_source(ingredients[lead_index(plan.weights, [i.score for i in ingredients])])
                averaged = [t for t in plan.tensors if t.average]
                dtype = config_dtype(options.dtype_name, [t.dtype for t in averaged],
                                     [tensor_maps[0][t.name].dtype for t in averaged])
                copy_companion_files(local_dir_of(first), tmp, ingredient=first.name, dtype=dtype,
                                     processor_source=(lead.local_dir, lead.name))
                if recipe.batchnorm is not None:  # a replay: the recorded recalibration, inside the same commit
                    from .evaluation.batchnorm import replay_batchnorm

                    replay_batchnorm(tmp, calibration, recipe.batchnorm)
                soup = Soup(**made, adapter_export=export, facts=facts_of(tmp))  # the result, once written
                soup.write_card(directory=tmp)  # inside the commit: the card is the soup's from the start
        wait_for_everyone()
        if soup is None:  # (processes that did not merge: the main process settled it inside the commit)
            checked.settle()
            soup = Soup(**made)
    return soup


def _rerun_spec(recipe: Recipe) -> EvalSpec | None:
    """The recorded evaluation a replay re-runs the method on, for a recipe whose method wrote precomputed tensors
    (Fisher; `parameters["replay"] == "rerun"`); `None` for any other recipe (its recorded plan is applied).

    Raises:
        [`RecipeError`]: the recipe records no held-out data, or only an in-memory one it cannot re-load.
    """
    from .errors import RecipeError
    from .recipes.recipe import IN_MEMORY

    if (recipe.parameters or {}).get("replay") != "rerun":
        return None
    spec = recipe.evaluation
    if spec is None or spec.dataset in (None, IN_MEMORY):
        raise RecipeError(f"method={recipe.method!r} computed its soup from held-out data that the recipe cannot "
                          "re-load (eval_dataset was an in-memory object); replay re-runs the method on it.",
                          fix=f"re-create the soup with soup_from_hub(..., method={recipe.method!r}, "
                              "eval_dataset=<the same data>), or pass the data as a path or Hub id.")
    return spec


def _rerun(recipe: Recipe, spec: EvalSpec, ingredients: list[Ingredient], output_dir: Any, output: Any,
           access: HubAccess, options: MergeOptions) -> Soup:
    """Replay of a recipe whose method wrote precomputed tensors (Fisher): the method is re-run on the recorded
    held-out data (`spec`, from [`_rerun_spec`]), with the recorded evaluation settings."""
    from .evaluation.data import as_eval_dataset

    batch_size = (recipe.parameters or {}).get("batch_size")  # recorded by the method: its summation order
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0:
        spec = dataclasses.replace(spec, batch_size=batch_size)
    eval_data = as_eval_dataset(spec.dataset, spec.split, max_samples=spec.max_samples)
    checked = preflight(ingredients, read_metas(ingredients, access, False), trust_remote_code=False,
                        align_labels=options.align_labels, arch_check=options.arch_check, needs_eval=True,
                        eval_data=eval_data, spec=spec)
    return _brew(ingredients, checked, recipe.method, None, output_dir, output, access=access,
                 eval_dataset=spec.dataset, eval_data=eval_data, spec=spec, options=options,
                 trust_remote_code=False, allow_pickle=False)


def _public_overrides(plan: MergePlan) -> list[dict[str, Any]]:
    """The plan's per-tensor part a recipe can hold: without copies from a method's private inputs (replay re-runs
    that method instead)."""
    first_private = plan.num_inputs - plan.private
    return [e for e in plan.overrides() if e.get("source", -1) < first_private]


def _agreed_card_metadata(ingredients: Sequence[Ingredient]) -> dict[str, Any]:
    """License, language and datasets metadata that every ingredient's card declares identically."""
    from .card import INHERITED_FIELDS
    from .checkpoint.meta import card_metadata

    cards = [card_metadata(os.path.join(i.local_dir, "README.md")) if i.local_dir else {} for i in ingredients]
    agreed: dict[str, Any] = {}
    for key in INHERITED_FIELDS:
        values = [c.get(key) for c in cards]
        if values and values[0] and all(v == values[0] for v in values):
            agreed[key] = values[0]
    return agreed


def load_recipe(source: str | os.PathLike[str], *, token: str | bool | None = None,
                endpoint: str | None = None) -> Recipe:
    """Read a recipe from a YAML file, a soup directory, a soup's card file, or a soup repo on the Hub.

    Args:
        source (`str`): a recipe YAML file; a soup directory (its `recipe.yaml`, else its `README.md`); a model card
            file (`README.md`); or a soup repo id whose card embeds the recipe.
        token (`str` or `bool`, *optional*): Hub token for a private soup repo.
        endpoint (`str`, *optional*): the Hub endpoint.

    Returns:
        [`Recipe`]

    Raises:
        [`RecipeError`]: no recipe could be read (e.g. the repo or directory is not a soup made by hf_soups).
        [`IngredientNotFoundError`], [`AuthenticationError`]: the soup repo cannot be read.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from .card import recipe_from_card
    from .errors import RecipeError
    from .soup import RECIPE_FILE

    path = os.fspath(source)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, RECIPE_FILE)):
            return Recipe.load(os.path.join(path, RECIPE_FILE))
        if not os.path.isfile(os.path.join(path, "README.md")):
            raise RecipeError(f"'{path}' is not a soup directory: it has neither {RECIPE_FILE} nor a model card.",
                              fix="pass the output directory of a soup made by hf_soups, or a recipe YAML file.")
        path = os.path.join(path, "README.md")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read(1 << 22)
        if path.endswith(".md") or text.startswith("---"):
            return recipe_from_card(_parse_card(text, os.fspath(source)))
        return Recipe.from_yaml(text)
    from .hub._errors import hub_errors

    with hub_errors(path, token_given=bool(token), token=token, endpoint=endpoint):
        try:  # `endpoint` honoured (ModelCard.load would ask the default endpoint, with the token)
            card_path = hf_hub_download(path, "README.md", token=token, endpoint=endpoint)
        except EntryNotFoundError:
            raise RecipeError(f"'{source}' has no model card, so it is not a soup made by hf_soups.",
                              fix="pass a soup repo id, a soup directory or a recipe YAML file.") from None
    with open(card_path, encoding="utf-8") as f:
        return recipe_from_card(_parse_card(f.read(1 << 22), os.fspath(source)))


def _parse_card(text: str, source: str) -> Any:
    """A model card from untrusted text; YAML that the card parser refuses (python tags, bad dates) is a RecipeError."""
    import yaml
    from huggingface_hub import ModelCard

    from .errors import RecipeError

    try:
        return ModelCard(text)
    except (ValueError, yaml.YAMLError) as e:  # a crafted card: bad dates, huge ints, python tags
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise RecipeError(f"cannot read a model card from '{source}' ({why}).",
                          fix="pass a recipe YAML file, a soup directory or a soup repo id.") from None


@guard_keywords
def replay_recipe(recipe: Recipe, output_dir: str | os.PathLike[str] | None = None, *,
                  access: HubAccess | None = None, overwrite: bool = False, progress: bool = True,
                  allow_local: bool = False, calibration_dataset: Any = None) -> Soup:
    """Re-create a soup bit for bit from its recipe: the same pinned ingredients, weights, dtype and rules, and the
    same BatchNorm recalibration when the recipe records one.

    Held-out selection is not re-run: the recorded weights are applied as they are.

    Args:
        recipe ([`Recipe`]): from [`load_recipe`] or a soup's `.recipe`.
        output_dir (`str`, *optional*): where to write the soup (a temporary directory when omitted).
        access ([`HubAccess`], *optional*): the Hub endpoint, token (for private ingredients) and cache directory.
        overwrite (`bool`, *optional*, defaults to `False`): replace a soup hf_soups wrote at `output_dir`.
        allow_local (`bool`, *optional*, defaults to `False`): accept local directories among the ingredients (only
            for a recipe you wrote yourself; a recipe from a model card may only name Hub repos pinned to shas).
        calibration_dataset (`datasets.Dataset` or `str`, *optional*): the BatchNorm calibration data, needed when
            the recipe recomputed BatchNorm statistics on an in-memory dataset (a recorded path or Hub id is
            re-loaded by itself). Its pixels must have the recorded sha256.

    Returns:
        [`Soup`]: with the recipe's method and recipe attached.

    Raises:
        [`RecipeError`]: a field is invalid, or an ingredient is not a Hub repo pinned to a full commit sha (and
            `allow_local=False`); raised before anything is downloaded.
        [`InvalidArgumentError`]: the recipe recomputes BatchNorm statistics on an in-memory set and
            `calibration_dataset` is not given (raised before anything is downloaded).
        [`SoupError`]: the calibration data differs from the recorded one (nothing is written then).
        [`UnknownArgumentError`]: a keyword this function does not take (`token=` names `access=HubAccess(...)`).
        Everything [`soup_from_hub`] raises.
    """
    from .recipes.recipe import check_replayable, replayable_base

    access = access if access is not None else HubAccess()
    cache_dir = access.cache_dir

    recipe = Recipe.from_dict(recipe.to_dict())  # re-validate every field (a Recipe can be built by hand)
    refs = check_replayable(recipe, allow_local=allow_local)
    replayable_base(recipe, allow_local=allow_local)  # the adapters' base: pinned as the ingredients are
    rerun = _rerun_spec(recipe)  # refused before any download when the held-out data cannot be re-loaded
    calibration = None
    bn = recipe.batchnorm
    if bn is not None:  # the calibration data is loaded before any download (its sha256 is checked in the commit)
        if calibration_dataset is None and not bn.recorded:
            raise InvalidArgumentError(
                "the recipe recomputes BatchNorm statistics on an in-memory calibration set that it cannot hold "
                f"({bn.describe()}); without it the soup cannot be re-created.",
                fix="pass calibration_dataset=<the same data>.", param="calibration_dataset")
        from .evaluation.batchnorm import load_calibration_data

        calibration = load_calibration_data(bn.dataset if calibration_dataset is None else calibration_dataset,
                                            bn.split)[0]
    options = MergeOptions(dtype=recipe.dtype, int_rule=recipe.int_rule,  # type: ignore[arg-type]
                           align_labels=recipe.align_labels, progress=progress)
    output = None
    if output_dir is not None:  # fail fast, before any download; the commit re-checks against this very state
        output = AtomicDirectory(output_dir, overwrite=overwrite, ingredients=_local_dirs(refs),
                                 caches=[cache_dir or ""])
    from .runs.hub import fetch_run_folders

    refs = fetch_run_folders(refs, access.token, access.endpoint, access.cache_dir)  # user/run@<sha>/checkpoint-<step>
    # adapters are read against the recorded, pinned base, never the one their configs name today
    ingredients = _resolve_all(refs, None, access, recipe.base)
    check_ingredient_set(ingredients)  # as soup_from_hub does
    checked = preflight(ingredients, read_metas(ingredients, access, False), trust_remote_code=False,
                        align_labels=options.align_labels, arch_check=options.arch_check, needs_eval=False)
    if rerun is not None:  # the soup holds tensors the method computed from held-out data: re-run it
        return _rerun(recipe, rerun, ingredients, output_dir, output, access, options)
    soup = _brew(ingredients, checked, "weighted", list(recipe.weights), output_dir, output, access=access,
                 eval_dataset=None, spec=EvalSpec(), options=options,
                 trust_remote_code=False, allow_pickle=False, recipe=recipe, calibration=calibration,
                 as_adapter=recipe.as_adapter,
                 base_input=_resolve_all([recipe.base], None, access)[0] if recipe.base_input and recipe.base else None)
    # Soup.evaluate recalibrates the baselines on the calibration data, and scores with the recipe's metric (a
    # callable: asks for it again)
    evaluation = recipe.evaluation
    return dataclasses.replace(soup, calibration_data=calibration, **({} if evaluation is None else {
        "metric": evaluation.metric_name, "metric_fn": None if evaluation.metric_replayable else evaluation.metric}))
