"""Model cards for soups: pure rendering with `huggingface_hub.ModelCard`/`ModelCardData`. Never touches the network."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation.tasks import head_for, usage_code
from .recipes import METHODS, Recipe, get_method
from .refs import Ingredient
from .text import escape_markdown, one_line

__all__ = ["ModelFacts", "CardValues", "render_card", "build_card", "escape_markdown", "one_line", "pipeline_tag_for",
           "recipe_from_card", "retarget_card",
           "usage_lines", "INHERITED_FIELDS"]

_TAGS = ["merge", "model-soup", "hf-soups"]

#: Card metadata a soup inherits from its ingredients' cards when they all agree.
INHERITED_FIELDS: tuple[str, ...] = ("license", "language", "datasets")

_USAGE_HEADING = "## How to use"
#: The fenced recipe block's opening line starts with a fence and `yaml`; its first YAML line is this key.
_RECIPE_KEY = "hf_soups_recipe"
#: The YAML key, after the recipe in the card's block, holding sha256 of the recipe's YAML (`Recipe.to_yaml()`).
_DIGEST_KEY = "hf_soups_recipe_sha256"



def _code(text: Any) -> str:
    return escape_markdown(text, code=True)


def pipeline_tag_for(architectures: Sequence[str] | None, config: Mapping[str, Any] | None = None) -> str | None:
    """The pipeline tag of the head (`BertForSequenceClassification` -> `text-classification`), from the task
    registry ([`hf_soups.evaluation.tasks.head_for`]); `config` lets a task of its `problem_type` decide."""
    head = head_for({**(config or {}), "architectures": architectures})
    return head.pipeline_tag if head else None


def _describe(method: str) -> str:
    """The registered method's description, linked to its paper."""
    entry = METHODS.get(method)
    return f"{entry.description} [Paper]({entry.paper})." if entry is not None else ""


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _fmt_ci(x: float | None, ci: Sequence[float] | None) -> str:
    return _fmt(x) if x is None or not ci else f"{x:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _shown_path(path: str | os.PathLike[str]) -> str:
    """A local soup directory as a card may show it: relative to the working directory when it lies under it, else
    its folder name (an absolute local path never enters a card, which may be uploaded as it is)."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    rel = os.path.relpath(text)
    return rel if not rel.startswith("..") else os.path.basename(os.path.normpath(text))


def usage_lines(config: Mapping[str, Any], model_path: str) -> list[str]:
    """The "How to use" section: the task of the head writes the code ([`Task.usage`]).

    Args:
        config (`Mapping`): the soup's `config.json`.
        model_path (`str`): the repo id (or local directory) the snippet loads.
    """
    head = head_for(config)
    code = head.usage(config, model_path) if head else usage_code(config, model_path, None)
    return [_USAGE_HEADING, "", "```python", *code, "```", ""]


def _soup_size_sentence(method: str, ingredients: Sequence[Ingredient], base_input: bool = False) -> list[str]:
    """The card's opening: which soup of how many checkpoints, then what the method does (its registered
    description, linked to its paper)."""
    kept = [i for i in ingredients if i.weight is None or i.weight > 0]
    n, k = len(ingredients), len(kept)
    link = "[hf_soups](https://github.com/hf-soups/hf_soups)"
    if k == 1 and n > 1:
        only = kept[0]
        return [f"A **{method} model soup** made with {link}, which kept 1 of {n} fine-tuned checkpoints. "
                + _describe(method), "",
                f"**This soup is one ingredient:** selection kept only {_code(only.repo_id or only.ref)}, so its "
                f"weights are those of that checkpoint (revision {_code(only.revision or 'local')}); no averaging "
                "took place."]
    if n == 1:
        return [f"A single-ingredient **{method} model soup** made with {link} (allowed for testing): its weights are "
                f"those of {_code(kept[0].repo_id or kept[0].ref)}."]
    kept_text = f"that kept {k} of {n}" if k < n else f"of {n}"
    base = " and their pretrained base" if base_input else ""
    return [f"A **{method} model soup** made with {link} {kept_text} fine-tuned checkpoints{base}. "
            + _describe(method)]


def _method_lines(entry: Any, parameters: Mapping[str, Any], names: Sequence[str]) -> list[str]:
    """The card's "Method parameters" section: the method's own summary of its recorded parameters
    (`register_method(card_section=...)`); none when it records none (what the method does and its paper open the
    card)."""
    section = entry.card_section(parameters, list(names)) if parameters else ""
    return ["", f"## Method parameters ({escape_markdown(entry.name)})", "", section] if section else []


@dataclass(frozen=True)
class ModelFacts:
    """What the card needs to know of the soup's model, taken once from its `config.json` ([`ModelFacts.from_config`])
    so that rendering reads no file.

    Attributes:
        architectures (`tuple[str, ...]`): `config.architectures`.
        problem_type (`str`, *optional*): `config.problem_type` (decides the task among heads of one architecture).
        labels (`tuple[str, ...]`): the label names, in id order (`config.id2label`).
        num_labels (`int`, *optional*): `config.num_labels`, when there is no `id2label`.
        auto_map (`tuple[tuple[str, str], ...]`): `config.auto_map` (custom code: the snippet uses an Auto class).
    """

    architectures: tuple[str, ...] = ()
    problem_type: str | None = None
    labels: tuple[str, ...] = ()
    num_labels: int | None = None
    auto_map: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelFacts:
        """The facts of a `config.json` (its values as they are; the card escapes what it shows)."""
        arch = config.get("architectures")
        id2label = config.get("id2label")
        labels: tuple[str, ...] = ()
        if isinstance(id2label, Mapping):
            try:
                labels = tuple(str(v) for _, v in sorted(id2label.items(), key=lambda kv: int(kv[0])))
            except (TypeError, ValueError):
                labels = tuple(str(v) for v in id2label.values())
        auto_map = config.get("auto_map")
        num = config.get("num_labels")
        problem = config.get("problem_type")
        return cls(
            architectures=tuple(a for a in arch if isinstance(a, str)) if isinstance(arch, (list, tuple)) else (),
            problem_type=problem if isinstance(problem, str) else None,
            labels=labels,
            num_labels=num if isinstance(num, int) and not isinstance(num, bool) else None,
            auto_map=tuple((str(k), str(v)) for k, v in auto_map.items()) if isinstance(auto_map, Mapping) else (),
        )

    def as_config(self) -> dict[str, Any]:
        """The facts as the `config` mapping the task registry reads ([`head_for`], [`Task.usage`])."""
        config: dict[str, Any] = {"architectures": list(self.architectures)}
        if self.problem_type is not None:
            config["problem_type"] = self.problem_type
        if self.labels:
            config["id2label"] = dict(enumerate(self.labels))
        if self.num_labels is not None:
            config["num_labels"] = self.num_labels
        if self.auto_map:
            config["auto_map"] = dict(self.auto_map)
        return config

    @property
    def pipeline_tag(self) -> str | None:
        """The head's pipeline tag, from the task registry ([`pipeline_tag_for`])."""
        return pipeline_tag_for(self.architectures, self.as_config())


@dataclass(frozen=True)
class CardValues:
    """Everything a soup's card shows: [`render_card`] turns these values into the card and reads nothing else.

    Attributes: as the arguments of [`build_card`], with `facts` ([`ModelFacts`]) in place of the `config`.
    """

    method: str
    ingredients: Sequence[Ingredient]
    facts: ModelFacts
    recipe: Recipe
    base_model: str | None = None
    trace: Sequence[Mapping[str, Any]] = ()
    results: Mapping[str, Mapping[str, float]] | None = None
    metric: str = "accuracy"
    repo_id: str | None = None
    plot_file: str | None = None
    discovery: Mapping[str, Any] | None = None
    intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None
    differences: Mapping[str, Mapping[str, Sequence[float]]] | None = None
    warnings: Sequence[str] = ()
    compat_warnings: Sequence[Any] = ()
    datasets: Mapping[str, Mapping[str, str]] | None = None
    inherited: Mapping[str, Any] | None = None
    local_path: str | None = None
    notes: Sequence[str] = ()
    adapter_export: Mapping[str, Any] | None = None


def _eval_results(results: Mapping[str, Mapping[str, float]], key: str, metric: str, task: str | None,
                  datasets: Mapping[str, Mapping[str, str]]) -> list[EvalResult]:
    out = []
    for name, scores in results.items():
        if key not in scores:
            continue
        info = datasets.get(name, {})
        out.append(EvalResult(
            task_type=task or "other", dataset_type=info.get("id", name), dataset_name=info.get("name", name),
            dataset_config=info.get("config"), dataset_split=info.get("split", name), metric_type=metric,
            metric_value=round(float(scores[key]), 4),
        ))
    return out


def build_card(
    *,
    method: str,
    ingredients: Sequence[Ingredient],
    config: Mapping[str, Any],
    recipe: Recipe,
    base_model: str | None = None,
    trace: Sequence[Mapping[str, Any]] = (),
    results: Mapping[str, Mapping[str, float]] | None = None,
    metric: str = "accuracy",
    repo_id: str | None = None,
    plot_file: str | None = None,
    discovery: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    differences: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    warnings: Sequence[str] = (),
    compat_warnings: Sequence[Any] = (),
    datasets: Mapping[str, Mapping[str, str]] | None = None,
    inherited: Mapping[str, Any] | None = None,
    local_path: str | None = None,
    notes: Sequence[str] = (),
    adapter_export: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render a soup's model card.

    Args:
        method (`str`): the soup method.
        ingredients (`Sequence[Ingredient]`): the ingredients with their pinned revisions, weights and scores.
        config (`Mapping`): the soup's `config.json`.
        recipe ([`Recipe`]): the recipe that re-creates the soup.
        base_model (`str`, *optional*): the shared pretrained checkpoint, when known.
        trace (`Sequence[Mapping]`, *optional*): the greedy accept/reject trace.
        results (`Mapping[str, Mapping[str, float]]`, *optional*): `{eval set: {method: score}}`.
        metric (`str`, *optional*, defaults to `"accuracy"`): the metric name in `results`.
        repo_id (`str`, *optional*): the soup's repo id, for the title and the loading snippet.
        plot_file (`str`, *optional*): a figure in the soup directory to embed.
        compat_warnings (`Sequence[Problem]`, *optional*): the compatibility verdict's warnings, recorded in the card.
        datasets (`Mapping[str, Mapping[str, str]]`, *optional*): per evaluation set, what it really is
            (`{"id", "config", "split", "name"}`, see [`EvalSet`]), for `model-index`.
        inherited (`Mapping`, *optional*): `license`, `language`, `datasets` metadata the ingredients' cards agree on.
        local_path (`str`, *optional*): the soup directory, for the snippet when `repo_id` is not known yet.
        discovery (`Mapping`, *optional*): how the ingredients were found on the Hub (`CandidateSet.discovery`).
        intervals (`Mapping[str, Mapping[str, (low, high)]]`, *optional*): 95% bootstrap intervals of `results`.
        differences (`Mapping[str, Mapping[str, (delta, low, high)]]`, *optional*): each method minus the best
            individual, with its paired bootstrap interval.
        warnings (`Sequence[str]`, *optional*): e.g. a held-out set too small to separate the candidates.
        adapter_export (`Mapping`, *optional*): the errors of a soup written as one LoRA adapter (`as_adapter`).
        notes (`Sequence[str]`, *optional*): notes on the results printed under the table (e.g. how BatchNorm
            statistics were recalibrated for a like-for-like comparison).

    Returns:
        `ModelCard`: [`render_card`] of these values (`config` as [`ModelFacts`]): front matter with `base_model`
        (the ingredients in the soup, plus the pretrained base),
        `base_model_relation: merge`, tags, pipeline tag, inherited metadata and `model-index` results (rounded to
        4 decimals); body with the method, ingredient table, trace, results, plot, compatibility warnings, recipe
        and usage.
    """
    values = {k: v for k, v in locals().items() if k != "config"}
    return render_card(CardValues(facts=ModelFacts.from_config(config), **values))


def render_card(values: CardValues) -> ModelCard:
    """Render a soup's model card from its values, and nothing else (no file is read): the one renderer behind
    [`build_card`], [`Soup.card`], [`Soup.write_card`], [`Soup.push_to_hub`] and [`Soup.with_evaluation`].

    Args:
        values ([`CardValues`]): what the card shows.

    Returns:
        `ModelCard`: as [`build_card`].
    """
    cv = values
    method, ingredients, recipe, base_model, trace = cv.method, cv.ingredients, cv.recipe, cv.base_model, cv.trace
    results, metric, repo_id, plot_file, discovery = cv.results, cv.metric, cv.repo_id, cv.plot_file, cv.discovery
    intervals, differences, warnings, compat_warnings = cv.intervals, cv.differences, cv.warnings, cv.compat_warnings
    datasets, inherited, local_path, notes, adapter_export = cv.datasets, cv.inherited, cv.local_path, cv.notes, \
        cv.adapter_export
    entry = get_method(method)  # never render an unvalidated method string (it may come from a recipe on a card)
    config = values.facts.as_config()
    kept = [i for i in ingredients if i.weight is None or i.weight > 0]
    bases = list(dict.fromkeys(i.repo_id for i in kept if i.repo_id))
    if base_model and base_model not in bases:
        bases.append(base_model)
    pipeline_tag = values.facts.pipeline_tag
    name = str(repo_id).split("/")[-1] if repo_id else "model-soup"
    model_path = repo_id or (_shown_path(local_path) if local_path else "path/to/soup")
    eval_results = _eval_results(results or {}, f"{method}_soup", metric, pipeline_tag, datasets or {})
    extra = {k: v for k, v in (inherited or {}).items() if k in INHERITED_FIELDS and v}
    data = ModelCardData(
        library_name="transformers",
        base_model=bases or None,
        pipeline_tag=pipeline_tag,
        tags=list(_TAGS),
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        base_model_relation="merge",
        **extra,
    )
    per_tensor = any("weights" in entry_ for entry_ in recipe.tensors)  # the weights vary by tensor
    lines = [f"# {escape_markdown(name)}", "", *_soup_size_sentence(method, ingredients, recipe.base_input), "",
             "Model soups average the weights of models fine-tuned from one pretrained checkpoint "
             "(Wortsman et al., ICML 2022, [arXiv:2203.05482](https://arxiv.org/abs/2203.05482)): one model's "
             "inference cost, often better accuracy, above all under distribution shift.",
             "", "## Ingredients", "",
             f"| # | ingredient | revision | weight | in the soup | held-out score ({escape_markdown(metric)}) |",
             "|---|---|---|---|---|---|"]
    for k, ing in enumerate(ingredients, 1):
        inside = "yes" if ing.weight is None or ing.weight > 0 else "no"
        lines.append(f"| {k} | {escape_markdown(ing.repo_id or ing.ref)} | {_code(ing.revision or 'local')} | "
                     f"{'per tensor' if per_tensor and inside == 'yes' else _fmt(ing.weight)} | {inside} | "
                     f"{_fmt(ing.score)} |")
    if base_model:
        lines += ["", f"Pretrained base: {_code(base_model)}."]
    if recipe.base:
        shown = _code(_shown_path(recipe.base))
        lines += ["", f"The pretrained base {shown} is an input of the soup (pinned; a replay uses it)." if
                  recipe.base_input else
                  f"The LoRA adapters are read against the base {shown} (pinned; a replay uses it)."]
    lines += _method_lines(entry, recipe.parameters or {}, [i.repo_id or i.ref for i in ingredients])
    if discovery:
        lines += _discovery_lines(discovery)
    if trace:
        lines += ["", "## Greedy trace", "", f"| step | candidate | soup score ({escape_markdown(metric)}) | decision "
                  "| soup size |",
                  "|---|---|---|---|---|"]
        for k, step in enumerate(trace, 1):
            reason = f": {escape_markdown(step['reason'])}" if step.get("reason") else ""
            lines.append(f"| {k} | {escape_markdown(step['ingredient'])} | {_fmt(step['score'])} | "
                         f"{'accepted' if step['accepted'] else 'rejected'}{reason} | {step['soup_size']} |")
    if adapter_export:
        lines += _adapter_lines(adapter_export)
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {escape_markdown(w)}" for w in warnings]
    if results:
        methods = sorted({m for scores in results.values() for m in scores})
        header = "| method | " + " | ".join(escape_markdown(s) for s in results) + " |"
        lines += ["", f"## Results ({escape_markdown(metric)})", "", header, "|---|" + "---|" * len(results)]
        for m in methods:
            scored = (_fmt_ci(results[s].get(m), (intervals or {}).get(s, {}).get(m)) for s in results)
            lines.append(f"| {escape_markdown(m)} | " + " | ".join(scored) + " |")
        if intervals:
            lines += ["", "Brackets: paired bootstrap confidence intervals (every method resampled on the same "
                      "examples)."]
        if differences and any(differences.values()):
            lines += ["", "### Difference to the best individual", "", header, "|---|" + "---|" * len(results)]
            for m in methods:
                if m == "best_individual":
                    continue
                cells = [(differences.get(s) or {}).get(m) for s in results]
                lines.append(f"| {escape_markdown(m)} | " + " | ".join(
                    f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" if d else "–" for d in cells) + " |")
        lines += [""] + [f"> {escape_markdown(note)}" for note in notes] if notes else []
        lines += _described_datasets(results, datasets or {})
    if plot_file:
        lines += ["", f"![{escape_markdown(metric)} of every method on every evaluation set]({plot_file})"]
    if compat_warnings:
        lines += ["", "## Compatibility warnings", "",
                  "The compatibility verdict passed with these warnings:", ""]
        lines += [f"- **{escape_markdown(w.ingredient)}** ({escape_markdown(w.field)}): {escape_markdown(w.message)}"
                  for w in compat_warnings]
    lines += [
        "", "## Recipe", "",
        _replay_statement(recipe), "",
        *recipe_block(recipe), "",
        _replay_command(repo_id),
        "",
        *usage_lines(config, model_path),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _adapter_lines(export: Mapping[str, Any]) -> list[str]:
    """The card's account of a soup written as one LoRA adapter: exact, or the SVD's error per module."""
    module, worst = export["worst"]
    how = ("exact: the souped weight delta has rank at most r in every module" if export["exact"] else
           f"approximate: worst relative Frobenius error {worst:.2e} ({escape_markdown(module)})")
    lines = ["", "## As a LoRA adapter", "",
             f"Written as one LoRA adapter of rank {export['rank']}: the truncated SVD of the souped weight delta "
             f"of each module; {how}.", "", "| module | relative Frobenius error |", "|---|---|"]
    return lines + [f"| {escape_markdown(m)} | {e:.2e} |" for m, e in sorted(export["errors"].items())]


def _replay_command(repo_id: str | None) -> str:
    return ("Re-create it with `hf-soups recipe recipe.yaml --output soup/`"
            + (f" (or {_code(f'hf-soups recipe {repo_id} --output soup/')})." if repo_id else "."))


def recipe_digest(recipe_yaml: str) -> str:
    """sha256 of a recipe's YAML text (`Recipe.to_yaml()`), as the card's recipe block records it."""
    return hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest()


def recipe_block(recipe: Recipe) -> list[str]:
    """The card's fenced recipe block: the recipe's YAML, then `hf_soups_recipe_sha256: <sha256 of that YAML>`.

    The fence is longer than any run of backticks in the YAML, so no recorded string can close it.
    """
    text = recipe.to_yaml()
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return [f"{fence}yaml", text.rstrip("\n"), f"{_DIGEST_KEY}: {recipe_digest(text)}", fence]


def _discovery_lines(discovery: Mapping[str, Any]) -> list[str]:
    if "run" in discovery:  # checkpoints of one training run (`run_checkpoints`): its own sentence, escaped
        return ["", "## How the ingredients were found", "", run_sentence(discovery, code=_code, text=escape_markdown)]
    query = ", ".join(f"{escape_markdown(k)}={_code(v)}" for k, v in (discovery.get("query") or {}).items())
    lines = ["", "## How the ingredients were found", "",
             f"Found on the Hub on {escape_markdown(discovery.get('date'))} with {_code(discovery.get('command'))} "
             f"({query}): {escape_markdown(discovery.get('found'))} compatible fine-tunes, pinned to the revisions "
             "above."]
    rejected = discovery.get("rejected") or []
    if rejected:
        lines += ["", "| rejected | revision | reason |", "|---|---|---|"]
        lines += [f"| {escape_markdown(r.get('repo'))} | {_code(r.get('sha') or '-')} | "
                  f"{escape_markdown(r.get('reason') or '')} |" for r in rejected]
    return lines


def _described_datasets(results: Mapping[str, Mapping[str, float]],
                        datasets: Mapping[str, Mapping[str, str]]) -> list[str]:
    """What each evaluation set really is (Hub id, config, split), when the user said so ([`EvalSet`])."""
    described = [(s, datasets[s]) for s in results if datasets.get(s, {}).get("id")]
    if not described:
        return []
    return [""] + [f"- {_code(s)}: {_code(d['id'])}" + (f" ({escape_markdown(d['config'])})" if d.get("config") else "")
                   + (f", split {_code(d['split'])}" if d.get("split") else "") for s, d in described]


def retarget_card(card: ModelCard, repo_id: str, config: Mapping[str, Any]) -> ModelCard:
    """The same soup card, pointed at `repo_id`: title, `model_name`, replay command and loading snippet.

    Used when a soup directory is pushed with `hf-soups push DIR REPO` (a [`Soup`] re-renders its card itself).
    """
    text = card.text
    name = repo_id.split("/")[-1]
    text = re.sub(r"\A(\s*)# [^\n]*", lambda m: f"{m.group(1)}# {escape_markdown(name)}", text, count=1)
    text = re.sub(r"Re-create it with `hf-soups recipe recipe\.yaml --output soup/`[^\n]*",
                  lambda m: _replay_command(repo_id), text, count=1)
    start = text.find(_USAGE_HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(_USAGE_HEADING))
        tail = text[end:] if end >= 0 else ""
        text = text[:start] + "\n".join(usage_lines(config, repo_id)) + tail
    data = card.data
    if getattr(data, "model_name", None) or data.eval_results:
        data.model_name = name
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text if text.startswith(chr(10)) else chr(10) + text}")


def is_soup_card(card: ModelCard) -> bool:
    """Whether a model card was written by hf_soups (its tags, or a recipe block)."""
    return "hf-soups" in (card.data.tags or []) or "hf_soups_recipe:" in card.text


def _replay_statement(recipe: Recipe) -> str:
    """What replaying the recipe re-creates: "bit for bit" only where it holds."""
    where = "This recipe (also in this repository as `recipe.yaml`)"
    bn = recipe.batchnorm
    if bn is None:
        return f"{where} re-creates the soup bit for bit:"
    flag = ""
    if recipe.evaluation is not None and bn.recorded and recipe.evaluation.dataset == bn.dataset:
        flag = (" **The calibration data is the held-out data that chose the weights**, so held-out scores of this "
                "soup are not independent of its BatchNorm statistics.")
    if bn.recorded:
        return (f"After averaging, the BatchNorm statistics were recomputed on {_code(bn.describe())}.{flag} {where} "
                "re-creates the soup bit for bit (with the same torch version and hardware): replay re-loads that "
                "calibration data, checks its sha256 and recomputes the statistics:")
    return (f"After averaging, the BatchNorm statistics were recomputed on an in-memory calibration set "
            f"({_code(bn.describe())}) that a recipe cannot hold.{flag} {where} re-creates the averaged weights bit "
            "for bit; the BatchNorm statistics are re-created only when the same data is passed "
            "(`replay_recipe(recipe, calibration_dataset=...)`, `hf-soups recipe ... --calibration-dataset`), and "
            "replay refuses data with another sha256:")


#: A line of a card that starts a recipe mapping (wherever it is: a second one is refused).
_RECIPE_LINE = re.compile(r"^[ \t]*[\"']?hf_soups_recipe[\"']?[ \t]*:", re.M)
#: The recipe block: a backtick fence (3 or more) with `yaml`, the recipe, and the same fence on its own line.
_RECIPE_BLOCK = re.compile(r"^(`{3,})yaml[ \t]*\n(hf_soups_recipe:.*?\n)\1[ \t]*$", re.M | re.S)
_DIGEST_LINE = re.compile(r"^hf_soups_recipe_sha256:[ \t]*([0-9a-f]{64})[ \t]*$")
_CARD_FIX = "pass a soup made by hf_soups (its repo id, directory or README.md), or a recipe YAML file."


def recipe_from_card(card: ModelCard) -> Recipe:
    """Extract the recipe block from a soup's card, checked against the sha256 the block records.

    A card holds exactly one recipe block. Cards written before hf_soups recorded the digest (one block, no
    `hf_soups_recipe_sha256` line) are still read.

    Raises:
        [`RecipeError`]: the card holds no recipe (it is not a soup's card), more than one recipe, a recipe block
            that is not the one hf_soups writes, or a recipe that does not match its sha256 (edited after hf_soups
            wrote it).
    """
    from .errors import RecipeError
    from .recipes.recipe import safe_yaml

    text = card.text.replace("\r\n", "\n")
    starts = len(_RECIPE_LINE.findall(text))
    if starts == 0:
        raise RecipeError("this model card holds no hf_soups recipe: it is not the card of a soup made with hf_soups.",
                          fix=_CARD_FIX)
    if starts > 1:
        raise RecipeError(f"this model card holds {starts} hf_soups recipes where a soup's card holds one; the card "
                          "was edited or holds someone else's text, so none of them is taken.",
                          fix="use the soup's recipe.yaml, or re-write the card with hf_soups (Soup.write_card).")
    blocks = _RECIPE_BLOCK.findall(text)
    if len(blocks) != 1:
        raise RecipeError("this model card's hf_soups recipe is not in the fenced ```yaml block hf_soups writes.",
                          fix=_CARD_FIX)
    lines = blocks[0][1].rstrip("\n").split("\n")
    digest = _DIGEST_LINE.match(lines[-1])
    body = "\n".join(lines[:-1] if digest else lines) + "\n"
    keys = set(safe_yaml(body))
    if keys != {_RECIPE_KEY}:
        raise RecipeError(f"this model card's recipe block holds {sorted(map(str, keys - {_RECIPE_KEY}))[:5]} besides "
                          f"'{_RECIPE_KEY}', which hf_soups never writes there.", fix=_CARD_FIX)
    if digest and digest.group(1) != recipe_digest(body):
        raise RecipeError("this model card's recipe does not match the sha256 recorded under it: it was changed after "
                          "hf_soups wrote it.",
                          fix="use the soup's recipe.yaml, or re-write the card with hf_soups (Soup.write_card).")
    return Recipe.from_yaml(body)


def _backticks(text: Any) -> str:
    return f"`{text}`"


def run_sentence(discovery: Mapping[str, Any], *, code: Any = _backticks, text: Any = str) -> str:
    """The sentence that says what a checkpoint soup of one run is, from [`RunCheckpoints.discovery`].

    Args:
        discovery (`Mapping[str, Any]`): the run's record (`run`, `revision`, `rule`, `metric`, `steps`, `values`,
            `skipped`).
        code (`Callable[[Any], str]`, *optional*): how a name is shown as code (the card passes its escaping).
        text (`Callable[[Any], str]`, *optional*): how other outside text is shown (likewise).

    Returns:
        `str`: e.g. "Checkpoint soup of one run: steps 800, 900, 1000 of `user/run` (eval_loss 0.41, 0.40, 0.40);
        chosen: last 3."
    """
    steps = ", ".join(str(int(s)) for s in discovery.get("steps") or ())
    revision = discovery.get("revision")
    at = f" at {code(str(revision)[:12])}" if revision else ""
    values = list(discovery.get("values") or ())
    shown = (f" ({text(discovery.get('metric'))} "
             + ", ".join("–" if v is None else f"{float(v):.4g}" for v in values) + ")"
             if any(v is not None for v in values) else "")
    sentence = (f"Checkpoint soup of one run: steps {steps} of {code(discovery.get('run'))}{at}{shown}; "
                f"chosen: {text(discovery.get('rule'))}.")
    skipped = discovery.get("skipped") or ()
    if skipped:
        sentence += " Left out (no evaluation at their step): steps " + ", ".join(str(int(s)) for s in skipped) + "."
    return sentence
