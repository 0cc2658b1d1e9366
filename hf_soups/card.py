"""Model cards for soups: pure rendering with `huggingface_hub.ModelCard`/`ModelCardData`. Never touches the network."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .recipes import METHODS, Recipe, get_method
from .refs import Ingredient

__all__ = ["build_card", "pipeline_tag_for", "recipe_from_card", "retarget_card", "usage_lines", "INHERITED_FIELDS"]

_TAGS = ["merge", "model-soup", "hf-soups"]

#: Card metadata a soup inherits from its ingredients' cards when they all agree.
INHERITED_FIELDS: tuple[str, ...] = ("license", "language", "datasets")

_PIPELINES = (
    ("ForSequenceClassification", "text-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForCausalLM", "text-generation"),
    ("ForMaskedLM", "fill-mask"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForAudioClassification", "audio-classification"),
)

_USAGE_HEADING = "## How to use"


def pipeline_tag_for(architectures: Sequence[str] | None) -> str | None:
    """Infer the pipeline tag from `config.architectures` (`BertForSequenceClassification` -> `text-classification`)."""
    for arch in architectures or []:
        for suffix, tag in _PIPELINES:
            if arch.endswith(suffix):
                return tag
    return None


def _describe(method: str) -> str:
    """The registered method's description, linked to its paper."""
    entry = METHODS.get(method)
    return f"{entry.description} [Paper]({entry.paper})." if entry is not None else ""


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _fmt_ci(x: float | None, ci: Sequence[float] | None) -> str:
    return _fmt(x) if x is None or not ci else f"{x:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _shown_path(path: str | os.PathLike[str]) -> str:
    """A local soup directory as a card may show it: relative to the working directory when it lies under it, else
    its folder name (an absolute local path never enters a card, which may be uploaded as it is)."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    rel = os.path.relpath(text)
    return rel if not rel.startswith("..") else os.path.basename(os.path.normpath(text))


def usage_lines(config: Mapping[str, Any], model_path: str) -> list[str]:
    """The "How to use" section: the model class named in `config.architectures`, and the matching pipeline.

    Args:
        config (`Mapping`): the soup's `config.json`.
        model_path (`str`): the repo id (or local directory) the snippet loads.
    """
    arch = next(iter(config.get("architectures") or []), None)
    auto_map = config.get("auto_map") or {}
    task = pipeline_tag_for(config.get("architectures"))
    lines = [_USAGE_HEADING, "", "```python"]
    if arch and not auto_map:
        lines += [f"from transformers import {arch}" + (", pipeline" if task else ""), "",
                  f'model = {arch}.from_pretrained("{model_path}")']
    else:  # custom code: the Auto class resolves it (and needs trust_remote_code)
        lines += ["from transformers import AutoModel" + (", pipeline" if task else ""), "",
                  f'model = AutoModel.from_pretrained("{model_path}", trust_remote_code=True)']
    if task:
        lines.append(f'pipe = pipeline("{task}", model="{model_path}")')
    lines += ["```", ""]
    return lines


def _soup_size_sentence(method: str, ingredients: Sequence[Ingredient]) -> list[str]:
    kept = [i for i in ingredients if i.weight is None or i.weight > 0]
    n, k = len(ingredients), len(kept)
    link = "[hf_soups](https://github.com/hf-soups/hf_soups)"
    if k == 1 and n > 1:
        only = kept[0]
        return [f"A **{method} model soup** made with {link}, which kept 1 of {n} fine-tuned checkpoints. "
                + _describe(method), "",
                f"**This soup is one ingredient:** selection kept only `{only.repo_id or only.ref}`, so its weights "
                f"are those of that checkpoint (revision `{only.revision or 'local'}`); no averaging took place."]
    if n == 1:
        return [f"A single-ingredient **{method} model soup** made with {link} (allowed for testing): its weights are "
                f"those of `{kept[0].repo_id or kept[0].ref}`."]
    kept_text = f"kept {k} of {n}" if k < n else f"averages all {n}"
    return [f"A **{method} model soup** made with {link} that {kept_text} fine-tuned checkpoints. " + _describe(method)]


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
        notes (`Sequence[str]`, *optional*): notes on the results printed under the table (e.g. how BatchNorm
            statistics were recalibrated for a like-for-like comparison).

    Returns:
        `ModelCard`: front matter with `base_model` (the ingredients in the soup, plus the pretrained base),
        `base_model_relation: merge`, tags, pipeline tag, inherited metadata and `model-index` results (rounded to
        4 decimals); body with the method, ingredient table, trace, results, plot, compatibility warnings, recipe
        and usage.
    """
    get_method(method)  # never render an unvalidated method string (it may come from a recipe on a card)
    kept = [i for i in ingredients if i.weight is None or i.weight > 0]
    bases = list(dict.fromkeys(i.repo_id for i in kept if i.repo_id))
    if base_model and base_model not in bases:
        bases.append(base_model)
    pipeline_tag = pipeline_tag_for(config.get("architectures"))
    name = repo_id.split("/")[-1] if repo_id else "model-soup"
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
    lines = [f"# {name}", "", *_soup_size_sentence(method, ingredients), "",
             "Model soups average the weights of models fine-tuned from one pretrained checkpoint "
             "(Wortsman et al., ICML 2022, [arXiv:2203.05482](https://arxiv.org/abs/2203.05482)): one model's "
             "inference cost, often better accuracy, above all under distribution shift.",
             "", "## Ingredients", "",
             "| # | ingredient | revision | weight | in the soup | held-out score |", "|---|---|---|---|---|---|"]
    for k, ing in enumerate(ingredients, 1):
        inside = "yes" if ing.weight is None or ing.weight > 0 else "no"
        lines.append(f"| {k} | {ing.repo_id or ing.ref} | `{ing.revision or 'local'}` | "
                     f"{_fmt(ing.weight)} | {inside} | {_fmt(ing.score)} |")
    if base_model:
        lines += ["", f"Pretrained base: `{base_model}`."]
    if discovery:
        lines += _discovery_lines(discovery)
    if trace:
        lines += ["", "## Greedy trace", "", "| step | candidate | soup score | decision | soup size |",
                  "|---|---|---|---|---|"]
        for k, step in enumerate(trace, 1):
            lines.append(f"| {k} | {step['ingredient']} | {_fmt(step['score'])} | "
                         f"{'accepted' if step['accepted'] else 'rejected'} | {step['soup_size']} |")
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    if results:
        methods = sorted({m for scores in results.values() for m in scores})
        lines += ["", f"## Results ({metric})", "", "| method | " + " | ".join(results) + " |",
                  "|---|" + "---|" * len(results)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_fmt_ci(results[s].get(m), (intervals or {}).get(s, {}).get(m))
                                                   for s in results) + " |")
        if intervals:
            lines += ["", "Brackets: paired bootstrap confidence intervals (every method resampled on the same "
                      "examples)."]
        if differences and any(differences.values()):
            lines += ["", "### Difference to the best individual", "",
                      "| method | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
            for m in methods:
                if m == "best_individual":
                    continue
                cells = [(differences.get(s) or {}).get(m) for s in results]
                lines.append(f"| {m} | " + " | ".join(f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]" if d else "–"
                                                       for d in cells) + " |")
        lines += [""] + [f"> {note}" for note in notes] if notes else []
        lines += _described_datasets(results, datasets or {})
    if plot_file:
        lines += ["", f"![{metric} of every method on every evaluation set]({plot_file})"]
    if compat_warnings:
        lines += ["", "## Compatibility warnings", "",
                  "The compatibility verdict passed with these warnings:", ""]
        lines += [f"- **{_cell(w.ingredient)}** ({_cell(w.field)}): {_cell(w.message)}" for w in compat_warnings]
    lines += [
        "", "## Recipe", "",
        _replay_statement(recipe), "",
        "```yaml", recipe.to_yaml().rstrip(), "```", "",
        "Re-create it with `hf-soups recipe recipe.yaml --output soup/`"
        + (f" (or `hf-soups recipe {repo_id} --output soup/`)." if repo_id else "."),
        "",
        *usage_lines(config, model_path),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _discovery_lines(discovery: Mapping[str, Any]) -> list[str]:
    if "run" in discovery:  # checkpoints of one training run (`run_checkpoints`): its own sentence, escaped
        return ["", "## How the ingredients were found", "", _cell(discovery.get("description", ""))]
    query = ", ".join(f"{k}=`{v}`" for k, v in (discovery.get("query") or {}).items())
    lines = ["", "## How the ingredients were found", "",
             f"Found on the Hub on {discovery.get('date')} with `{discovery.get('command')}` ({query}): "
             f"{discovery.get('found')} compatible fine-tunes, pinned to the revisions above."]
    rejected = discovery.get("rejected") or []
    if rejected:
        lines += ["", "| rejected | revision | reason |", "|---|---|---|"]
        lines += [f"| {r['repo']} | `{r.get('sha') or '-'}` | {str(r.get('reason') or '').replace('|', '/')} |"
                  for r in rejected]
    return lines


def _described_datasets(results: Mapping[str, Mapping[str, float]],
                        datasets: Mapping[str, Mapping[str, str]]) -> list[str]:
    """What each evaluation set really is (Hub id, config, split), when the user said so ([`EvalSet`])."""
    described = [(s, datasets[s]) for s in results if datasets.get(s, {}).get("id")]
    if not described:
        return []
    return [""] + [f"- `{s}`: `{d['id']}`" + (f" ({d['config']})" if d.get("config") else "")
                   + (f", split `{d['split']}`" if d.get("split") else "") for s, d in described]


def retarget_card(card: ModelCard, repo_id: str, config: Mapping[str, Any]) -> ModelCard:
    """The same soup card, pointed at `repo_id`: title, `model_name`, replay command and loading snippet.

    Used when a soup directory is pushed with `hf-soups push DIR REPO` (a [`Soup`] re-renders its card itself).
    """
    text = card.text
    name = repo_id.split("/")[-1]
    text = re.sub(r"\A(\s*)# [^\n]*", lambda m: f"{m.group(1)}# {name}", text, count=1)
    text = re.sub(r"Re-create it with `hf-soups recipe recipe\.yaml --output soup/`[^\n]*",
                  f"Re-create it with `hf-soups recipe recipe.yaml --output soup/` (or `hf-soups recipe {repo_id} "
                  "--output soup/`).", text, count=1)
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
        return (f"After averaging, the BatchNorm statistics were recomputed on `{bn.describe()}`.{flag} {where} "
                "re-creates the soup bit for bit (with the same torch version and hardware): replay re-loads that "
                "calibration data, checks its sha256 and recomputes the statistics:")
    return (f"After averaging, the BatchNorm statistics were recomputed on an in-memory calibration set "
            f"(`{bn.describe()}`) that a recipe cannot hold.{flag} {where} re-creates the averaged weights bit for "
            "bit; the BatchNorm statistics are re-created only when the same data is passed "
            "(`replay_recipe(recipe, calibration_dataset=...)`, `hf-soups recipe ... --calibration-dataset`), and "
            "replay refuses data with another sha256:")


def recipe_from_card(card: ModelCard) -> Recipe:
    """Extract the recipe block from a soup's card.

    Raises:
        [`RecipeError`]: the card holds no recipe (it is not a soup's card).
    """
    from .errors import RecipeError

    text = card.text
    start = text.find("```yaml\nhf_soups_recipe:")
    if start < 0:
        raise RecipeError("this model card holds no hf_soups recipe: it is not the card of a soup made with hf_soups.",
                          fix="pass a soup made by hf_soups (its repo id, directory or README.md), or a recipe "
                              "YAML file.")
    end = text.find("```", start + 7)
    return Recipe.from_yaml(text[start + len("```yaml\n") : end])
