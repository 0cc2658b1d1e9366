"""The recipe: a frozen, YAML-serialisable record that re-creates a soup exactly."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from .. import constants
from ..errors import InvalidArgumentError, RecipeError

__all__ = ["Recipe", "EvalSpec", "BatchNormCalibration", "IN_MEMORY", "check_replayable"]

#: Largest recipe accepted, in bytes (a real one is well under 4 KB).
MAX_RECIPE_BYTES = 64 * 1024
_MAX_DEPTH = 8
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
#: A checkpoint folder of a Hub run, as a soup of its checkpoints names it: `user/run@<40-hex sha>/checkpoint-<step>`.
RUN_FOLDER_RE = re.compile(r"^(?P<repo>[^@]+)@(?P<sha>[0-9a-f]{40})/checkpoint-(?P<step>\d+)$")
_FIX = "start from the recipe block of a soup's model card."
#: How a recipe names data that was passed as an in-memory object (it cannot be re-loaded from the recipe).
IN_MEMORY = "<in-memory dataset>"


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation settings of greedy and learned soups: the single home of everything about held-out scoring.

    Only the fields that decide the result (`dataset`, `split`, `metric`, the columns, `strict`, `learned_steps`, and
    `max_samples`, `fisher_examples`, `dtype` and `threshold` when set) are recorded in the recipe; the runtime ones (`batch_size`, `device`,
    `max_memory`, `offload_folder`) are not.

    Args:
        dataset (`str`, *optional*):
            What the held-out data is: a local path (csv/json/parquet/saved dataset) or a Hub dataset id. Recorded in
            the recipe; `soup_from_hub` loads it when no `eval_dataset` is passed.
        split (`str`, *optional*):
            The split, for Hub datasets and saved `DatasetDict`s.
        text_column, label_column, image_column (`str`, *optional*):
            Column names (defaults: `text`/`sentence`, `label`, `image`/`img`). `text_column` may name two columns,
            `("sentence1", "sentence2")` for a sentence pair or `("question", "context")` for extractive QA; token
            classification reads word lists (`tokens`) and per-word labels (`ner_tags`); see docs/TASKS.md.
        metric (`str`, *optional*, defaults to `"accuracy"`):
            An `evaluate` metric name, or a local metric script directory (recorded, and replayed, as it is); an
            `evaluate.EvaluationModule` (recorded by its name); or a callable `(predictions, references) -> float`,
            which a recipe cannot hold: it records `metric: null` and `metric_callable: <module.qualname>`, and
            reads back a [`UserCallableMetric`] that asks for the callable again.
        strict (`bool`, *optional*, defaults to `False`):
            Greedy accepts only strict improvements (`>`), instead of the paper's `>=`.
        batch_size (`int`, *optional*):
            Evaluation batch size; defaults to 64 on the CPU and 256 on an accelerator (64 for learned soups, whose
            optimisation steps use these batches). A given value always wins.
        learned_steps (`int`, *optional*, defaults to `30`):
            Optimisation steps of a learned soup.
        max_samples (`int`, *optional*):
            Evaluate only the first `max_samples` examples; required for a `datasets.IterableDataset`.
        fisher_examples (`int`, *optional*):
            Held-out examples each ingredient's Fisher uses at most (`method="fisher"`; 256 when unset;
            `max_samples` lowers it). Unlike `max_samples`, it does not shorten held-out scoring.
        max_memory (`dict`, *optional*):
            accelerate's `{device: size}` budget for greedy evaluation of models larger than memory: each candidate
            is streamed to disk and evaluated with `device_map="auto"`, offloading to CPU and `offload_folder`.
        offload_folder (`str`, *optional*):
            Where accelerate offloads weights that do not fit `max_memory`.
        device (`str`, *optional*):
            Where held-out evaluations run (`"cuda:1"`, `"cpu"`, `"mps"`); defaults to accelerate's
            `PartialState().device` under `accelerate launch` or when an accelerator is present (each launched rank
            on its own device), else the CPU. Separate from the merge device (`MergeOptions.device`).
        dtype (`str`, *optional*):
            `"bfloat16"` or `"float16"` evaluates under `torch.autocast` (faster on GPUs, scores may differ slightly);
            the default is exact fp32.
        threshold (`float`, *optional*):
            Multi-label models: the sigmoid probability above which a label is predicted (0.5 when unset; recorded).
    """

    dataset: str | None = None
    split: str | None = None
    metric: Any = "accuracy"
    text_column: str | tuple[str, ...] | None = None
    label_column: str | None = None
    image_column: str | None = None
    strict: bool = False
    batch_size: int | None = field(default=None, metadata={"runtime": True})
    learned_steps: int = 30
    max_samples: int | None = None
    fisher_examples: int | None = None
    max_memory: dict[Any, Any] | None = field(default=None, metadata={"runtime": True})
    offload_folder: str | None = field(default=None, metadata={"runtime": True})
    device: str | None = field(default=None, metadata={"runtime": True})
    dtype: str | None = None
    threshold: float | None = None

    @property
    def metric_name(self) -> str:
        """The metric's name: the name it is loaded by, a metric object's `.name`, or a callable's qualified name."""
        from ..metric_spec import metric_record

        return metric_record(self.metric)[1]

    @property
    def metric_replayable(self) -> bool:
        """Whether the recipe can re-load the metric by its name (`False` for a user callable)."""
        from ..metric_spec import metric_record

        return metric_record(self.metric)[0] is not None

    def to_dict(self) -> dict[str, Any]:
        """The fields that decide the result, as recorded in a recipe (runtime settings left out).

        A metric a name cannot re-load (a user callable) is recorded as `metric: null` with `metric_callable:
        <its qualified name>`."""
        from ..metric_spec import metric_record

        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("runtime")}
        data["metric"], name = metric_record(self.metric)
        if data["metric"] is None:
            data["metric_callable"] = name
        data["dataset"] = self.dataset if self.dataset is not None else IN_MEMORY
        if isinstance(self.text_column, tuple):
            data["text_column"] = list(self.text_column)
        for key in ("dtype", "max_samples", "fisher_examples", "threshold"):  # at defaults: recipes stay as they were
            if getattr(self, key) is None:
                data.pop(key)
        if self.dtype is not None:
            data["dtype"] = str(self.dtype).replace("torch.", "")
        return data


@dataclass(frozen=True)
class BatchNormCalibration:
    """How a soup's BatchNorm running statistics were recomputed (`Soup.recompute_batchnorm`), for replay.

    Args:
        dataset (`str`): the calibration data: a local path or a Hub dataset id that replay loads, or
            `"<in-memory dataset>"` when an object was passed (replay then needs the same data passed again).
        split (`str`, *optional*): its split.
        image_column (`str`, *optional*): its image column.
        num_batches (`int`, *optional*): batches used (`None`: the whole set, in order); with a number, a sample of
            `num_batches * batch_size` examples drawn with `seed`, in dataset order.
        batch_size (`int`): examples per batch (per-batch statistics are averaged, so it matters).
        seed (`int`): the sampling seed.
        examples (`int`): examples actually used.
        sha256 (`str`): sha256 of the preprocessed calibration pixels; replay refuses different data.
    """

    dataset: str
    split: str | None = None
    image_column: str | None = None
    num_batches: int | None = None
    batch_size: int = 64
    seed: int = 0
    examples: int = 0
    sha256: str = ""

    @property
    def recorded(self) -> bool:
        """Whether replay can load the calibration data from the recipe alone."""
        return self.dataset != IN_MEMORY

    def describe(self) -> str:
        """One line for cards and messages."""
        split = f" (split {self.split})" if self.split else ""
        batches = f"{self.num_batches} batches" if self.num_batches else "all batches"
        return (f"{self.dataset}{split}: {self.examples} examples, {batches} of {self.batch_size}, seed {self.seed}, "
                f"pixels sha256 {self.sha256[:12]}")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to re-create a soup bit for bit.

    Attributes:
        method (`str`): `"uniform"`, `"weighted"`, `"greedy"` or `"learned"`.
        ingredients (`tuple[str, ...]`): `repo@sha` (or local paths) in input order.
        weights (`tuple[float, ...]`): the final normalised weights, one per ingredient.
        dtype (`str`, *optional*): output dtype override.
        int_rule (`str`): rule for differing integer buffers.
        align_labels (`bool`): classifier rows were permuted to the first ingredient's labels.
        evaluation ([`EvalSpec`], *optional*): the held-out evaluation behind a greedy/learned soup.
        seed (`int`): random seed (learned soups).
        batchnorm ([`BatchNormCalibration`], *optional*): BatchNorm statistics recomputed after averaging.
        base (`str`, *optional*): the base of the LoRA adapter ingredients, pinned (`repo@sha`, or a local path):
            a replay reads the adapters against this very base, not the one their configs name today.
        as_adapter (`int`, *optional*): the rank of a soup of adapters written as one LoRA adapter (`as_adapter=True,
            rank=r`); a replay writes the adapter again.
        hf_soups_version (`str`): the version that made the soup.
        tensors (`tuple[dict, ...]`): the plan's per-tensor part (`MergePlan.overrides()`): `{"weights": [...],
            "tensors": [...]}` (one weight per ingredient, then the base's when `base_input`) and `{"source": i,
            "tensors": [...]}` entries; empty when every tensor takes `weights`.
        parameters (`dict`, *optional*): the method's own parameters (`MethodResult.parameters`), for the card.
        base_input (`bool`): the base (`base`, pinned) is an input of the plan, after the ingredients.
    """

    method: str
    ingredients: tuple[str, ...]
    weights: tuple[float, ...]
    dtype: str | None = None
    int_rule: str = "first"
    align_labels: bool = False
    evaluation: EvalSpec | None = None
    seed: int = 0
    hf_soups_version: str = field(default_factory=lambda: _version())
    batchnorm: BatchNormCalibration | None = None
    base: str | None = None
    as_adapter: int | None = None
    tensors: tuple[dict[str, Any], ...] = ()
    parameters: dict[str, Any] | None = None
    base_input: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["ingredients"] = list(self.ingredients)
        data["weights"] = [float(w) for w in self.weights]
        if self.evaluation is None:
            data.pop("evaluation")
        else:
            data["evaluation"] = self.evaluation.to_dict()
        if self.batchnorm is None:
            data.pop("batchnorm")
        else:
            data["batchnorm"] = {f.name: getattr(self.batchnorm, f.name) for f in fields(self.batchnorm)}
        for optional in ("base", "as_adapter", "parameters"):
            if data[optional] is None:
                data.pop(optional)
        data["tensors"] = [dict(entry) for entry in self.tensors]
        for default in ("tensors", "base_input"):  # a plan-wide recipe reads as before
            if not data[default]:
                data.pop(default)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump({"hf_soups_recipe": self.to_dict()}, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a recipe from untrusted data (a model card), validating every field.

        Raises:
            [`RecipeError`]: a missing, unknown or invalid field, naming it.
        """
        if isinstance(data, dict) and "hf_soups_recipe" in data:
            data = data["hf_soups_recipe"]
        if not isinstance(data, dict):
            raise RecipeError("the recipe must be a mapping of fields.", fix=_FIX)
        return cls(**_validated(dict(data)))

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        """Parse a recipe from YAML with a safe loader: size-capped, no anchors or aliases, shallow nesting.

        Raises:
            [`RecipeError`]: too large, not YAML, uses aliases (the "billion laughs" bomb), or an invalid field.
        """
        return cls.from_dict(safe_yaml(text))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a recipe YAML file (at most `MAX_RECIPE_BYTES`), validating every field.

        Raises:
            [`RecipeError`]: see [`from_yaml`].
        """
        with open(path, "rb") as f:
            return cls.from_yaml(f.read(MAX_RECIPE_BYTES + 1))


def safe_yaml(text: str | bytes) -> Any:
    """`yaml.safe_load` for untrusted text, refusing oversized documents, anchors/aliases and deep nesting first.

    Raises:
        [`RecipeError`]: naming the limit that was hit.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError("the recipe is not UTF-8 text.", fix=_FIX) from None
    if not isinstance(text, str):
        raise RecipeError(f"expected YAML text, got {type(text).__name__}.", fix=_FIX)
    if len(text) > MAX_RECIPE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError(f"the recipe is larger than {MAX_RECIPE_BYTES} bytes.", fix=_FIX)
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events only: nothing is built yet
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RecipeError("the recipe uses YAML anchors or aliases, which recipes never need (and which can "
                                  "expand exponentially).", fix=_FIX)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise RecipeError(f"the recipe nests deeper than {_MAX_DEPTH} levels.", fix=_FIX)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        data = yaml.safe_load(text)
    except RecipeError:
        raise
    except yaml.YAMLError as e:
        raise RecipeError(f"the recipe is not valid YAML ({str(e).splitlines()[0][:200]}).", fix=_FIX) from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:  # e.g. malformed timestamps, huge ints
        raise RecipeError(f"the recipe cannot be read ({type(e).__name__}).", fix=_FIX) from None
    if not isinstance(data, dict):
        raise RecipeError("the recipe must be a YAML mapping.", fix=_FIX)
    return data


def _field_error(name: str, message: str, fix: str = _FIX) -> RecipeError:
    return RecipeError(f"field '{name}': {message}", fix=fix)


def _text(name: str, value: Any, limit: int = 512) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or any(ord(c) < 32 for c in value):
        raise _field_error(name, f"expected a non-empty single-line string of at most {limit} characters.")
    return value


def _validated(data: dict[str, Any]) -> dict[str, Any]:
    from ..validation import dtype_name, validate_dtype, validate_int_rule, validate_weights
    from .registry import get_method

    known = {f.name for f in fields(Recipe)}
    unknown = sorted(str(k)[:40] for k in data if k not in known)
    if unknown:
        raise RecipeError(f"unknown field(s) {unknown}.", fix=_FIX)
    for required in ("method", "ingredients", "weights"):
        if required not in data:
            raise _field_error(required, "missing.")
    out: dict[str, Any] = {}
    try:
        if not isinstance(data["method"], str) or len(data["method"]) > 64:
            raise _field_error("method", f"expected a method name, got {type(data['method']).__name__}.")
        out["method"] = get_method(data["method"]).name
        ingredients = data["ingredients"]
        if not isinstance(ingredients, list) or not ingredients or len(ingredients) > 1000:
            raise _field_error("ingredients", "expected a non-empty list (of at most 1000 references).")
        out["ingredients"] = tuple(_text("ingredients", i, 4096) for i in ingredients)
        if not isinstance(data["weights"], list):
            raise _field_error("weights", "expected a list of numbers.")
        out["weights"] = validate_weights(data["weights"], len(ingredients), parameter="weights")
        if data.get("dtype") is not None:
            out["dtype"] = dtype_name(validate_dtype(data["dtype"], parameter="dtype"))
        out["int_rule"] = validate_int_rule(data.get("int_rule", "first"), parameter="int_rule")
    except InvalidArgumentError as e:
        raise RecipeError(f"field {e.message}", fix=e.fix) from None
    if data.get("tensors"):
        out["tensors"] = _validated_tensors(data["tensors"], len(ingredients) + int(data.get("base_input") is True))
    if data.get("parameters") is not None:
        out["parameters"] = _validated_parameters(data["parameters"])
    for name in ("align_labels", "base_input"):
        if name in data:
            if not isinstance(data[name], bool):
                raise _field_error(name, "expected true or false.")
            out[name] = data[name]
    if "seed" in data:
        if isinstance(data["seed"], bool) or not isinstance(data["seed"], int) or not 0 <= data["seed"] < 2**63:
            raise _field_error("seed", "expected a non-negative integer.")
        out["seed"] = data["seed"]
    if data.get("base") is not None:
        out["base"] = _text("base", data["base"], 4096)
    if data.get("as_adapter") is not None:
        rank = data["as_adapter"]
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank <= 1 << 20:
            raise _field_error("as_adapter", "expected the adapter's rank, a positive integer.")
        out["as_adapter"] = rank
    if "hf_soups_version" in data:
        out["hf_soups_version"] = _text("hf_soups_version", data["hf_soups_version"], 64)
    evaluation = data.get("evaluation")
    if evaluation is not None:
        if not isinstance(evaluation, dict):
            raise _field_error("evaluation", "expected a mapping.")
        spec_fields = {f.name for f in fields(EvalSpec) if not f.metadata.get("runtime")} | {"metric_callable"}
        bad = sorted(str(k)[:40] for k in evaluation if k not in spec_fields)
        if bad or "dataset" not in evaluation:
            raise _field_error("evaluation", f"unknown fields {bad}." if bad else "'dataset' is missing.")
        spec: dict[str, Any] = {}
        if "metric_callable" in evaluation or ("metric" in evaluation and evaluation["metric"] is None):
            from ..metric_spec import UserCallableMetric

            if evaluation.get("metric") is not None:
                raise _field_error("evaluation.metric_callable", "a recipe records either a metric name or a user "
                                   "callable, not both.")
            spec["metric"] = UserCallableMetric(_text("evaluation.metric_callable", evaluation.get("metric_callable")))
        for k, v in evaluation.items():
            if k in ("metric", "metric_callable") and "metric" in spec:
                continue
            if k == "strict":
                if not isinstance(v, bool):
                    raise _field_error("evaluation.strict", "expected true or false.")
                spec[k] = v
            elif k in ("learned_steps", "max_samples", "fisher_examples"):
                if v is None and k != "learned_steps":
                    continue
                if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= (
                        1_000_000 if k == "learned_steps" else 1_000_000_000):
                    raise _field_error(f"evaluation.{k}", "expected a positive integer.")
                spec[k] = v
            elif k == "text_column" and isinstance(v, list):
                if not 1 <= len(v) <= 2:
                    raise _field_error("evaluation.text_column", "expected a column name or a list of two.")
                spec[k] = tuple(_text(f"evaluation.{k}", c) for c in v)
            elif k == "threshold" and v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
                    raise _field_error("evaluation.threshold", "expected a probability between 0 and 1.")
                spec[k] = float(v)
            elif v is not None or k == "dataset":
                spec[k] = _text(f"evaluation.{k}", v)
        out["evaluation"] = EvalSpec(**spec)
    if data.get("batchnorm") is not None:
        out["batchnorm"] = _validated_batchnorm(data["batchnorm"])
    if out.get("base_input") and not out.get("base"):
        raise _field_error("base_input", "a plan with the base as an input needs the pinned 'base'.")
    return out


def _validated_tensors(value: Any, inputs: int) -> tuple[dict[str, Any], ...]:
    """The recipe's per-tensor plan entries: each names tensors and either one finite weight per input or one
    input index (the plan checks the tensor names against the ingredients when the soup is made)."""
    if not isinstance(value, list) or len(value) > 100_000:
        raise _field_error("tensors", "expected a list of {weights, tensors} or {source, tensors} entries.")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or set(entry) not in ({"weights", "tensors"}, {"source", "tensors"}):
            raise _field_error("tensors", "each entry has 'tensors' and one of 'weights' or 'source'.")
        names = entry["tensors"]
        if not isinstance(names, list) or not names or len(names) > 100_000:
            raise _field_error("tensors", "each entry names a non-empty list of tensors.")
        checked: dict[str, Any] = {"tensors": [_text("tensors", n, 1024) for n in names]}
        if "source" in entry:
            source = entry["source"]
            if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source < inputs:
                raise _field_error("tensors", f"a source must be an input index below {inputs}; got {source!r}.")
            checked = {"source": source, **checked}
        else:
            ws = entry["weights"]
            if not isinstance(ws, list) or len(ws) != inputs or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in ws):
                raise _field_error("tensors", f"weights must be {inputs} finite numbers (one per input).")
            checked = {"weights": [float(w) for w in ws], **checked}
        out.append(checked)
    return tuple(out)


def _validated_parameters(value: Any, depth: int = 0) -> Any:
    """A method's recorded parameters: JSON-like values (mappings with string keys, lists, strings, numbers, bools,
    null), at most 8 levels deep."""
    if depth > 8:
        raise _field_error("parameters", "nested too deeply (at most 8 levels).")
    if isinstance(value, dict):
        return {_text("parameters", k, 128): _validated_parameters(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_validated_parameters(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise _field_error("parameters", f"expected JSON-like values; got {type(value).__name__}.")


def _validated_batchnorm(value: Any) -> BatchNormCalibration:
    if not isinstance(value, dict):
        raise _field_error("batchnorm", "expected a mapping.")
    known = {f.name for f in fields(BatchNormCalibration)}
    bad = sorted(str(k)[:40] for k in value if k not in known)
    if bad or "dataset" not in value:
        raise _field_error("batchnorm", f"unknown fields {bad}." if bad else "'dataset' is missing.")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k in ("num_batches", "batch_size", "seed", "examples"):
            if v is None and k == "num_batches":
                continue
            low = 0 if k in ("seed", "examples") else 1
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v < 2**63:
                raise _field_error(f"batchnorm.{k}", "expected a non-negative integer." if low == 0 else
                                   "expected a positive integer.")
            out[k] = v
        elif k == "sha256":
            if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
                raise _field_error("batchnorm.sha256", "expected 64 hex digits.")
            out[k] = v
        elif v is not None or k == "dataset":
            out[k] = _text(f"batchnorm.{k}", v)
    return BatchNormCalibration(**out)


def check_replayable(recipe: Recipe, *, allow_local: bool = False) -> list[Any]:
    """The references to replay: Hub repos pinned to full 40-hex commit shas (local paths only with `allow_local`).

    A recipe read from a model card is untrusted: it must not re-create a private local fine-tune (a crafted card
    with `weights: [1, 0]` naming a local directory would, and a `--push-to` would publish it), and it promises
    bit-for-bit replay, which only a pinned sha can keep.

    Returns:
        `list[IngredientRef]`: Hub references never interpreted as local paths (a Hub run's checkpoint folder,
        `user/run@<sha>/checkpoint-<step>`, keeps that name as `ref`: `replay_recipe` downloads the folder) (and,
        with `allow_local`, the local
        directories as they are).

    Raises:
        [`RecipeError`]: naming the first ingredient that is not a pinned Hub repo.
    """
    refs = [_replayable_ref(text, "ingredient", allow_local) for text in recipe.ingredients]
    return refs


def replayable_base(recipe: Recipe, *, allow_local: bool = False) -> Any:
    """The recipe's adapter base as a reference to replay (`None` when it records none), checked as ingredients are.

    Raises:
        [`RecipeError`]: the base is not a Hub repo pinned to a full commit sha (and `allow_local=False`).
    """
    return None if recipe.base is None else _replayable_ref(recipe.base, "base", allow_local)


def _replayable_ref(text: str, what: str, allow_local: bool) -> Any:
    from ..refs import IngredientRef

    repo_id, at, rev = text.rpartition("@")
    try:
        hub_ref = IngredientRef(ref=text, repo_id=repo_id, revision=rev) if at and _FULL_SHA.match(rev) \
            and IngredientRef.parse(f"{repo_id}@{rev}").repo_id == repo_id and not os.path.isdir(text) else None
    except Exception:
        hub_ref = None
    folder = RUN_FOLDER_RE.match(text)
    if hub_ref is None and folder is not None and not os.path.isdir(text) and what == "ingredient":
        try:  # a checkpoint folder of a Hub run: downloaded by replay_recipe, at its pinned sha
            if IngredientRef.parse(f"{folder['repo']}@{folder['sha']}").repo_id == folder["repo"]:
                hub_ref = IngredientRef(ref=text, repo_id=folder["repo"], revision=folder["sha"])
        except Exception:
            hub_ref = None
    if hub_ref is not None:
        return hub_ref
    if allow_local:
        return text
    from ..validation import mask_secrets

    raise RecipeError(
        f"{what} '{mask_secrets(text)}' is not a Hub repo pinned to a full 40-hex commit sha; a recipe "
        "can only promise a bit-for-bit replay of pinned Hub repos, and one read from a model card must not "
        "pick up local directories.",
        fix=f"pin every ingredient{' and the base' if what == 'base' else ''} as 'user/model@<40-hex sha>', or, for a "
            "recipe you wrote yourself with local checkpoints, pass allow_local=True (CLI: --allow-local-ingredients).",
    )


def _version() -> str:
    """The installed distribution's version (package metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_soups")
    except PackageNotFoundError:
        return constants.VERSION
