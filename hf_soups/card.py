"""Model cards for soups: pure rendering with `huggingface_hub.ModelCard`/`ModelCardData`. Never touches the network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .recipes import METHODS, Recipe, get_method
from .refs import Ingredient

__all__ = ["build_card", "pipeline_tag_for", "recipe_from_card"]

_TAGS = ["merge", "model-soup", "hf-soups"]

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
        repo_id (`str`, *optional*): the soup's repo id, for the loading snippet.
        plot_file (`str`, *optional*): a figure in the repo to embed.
        discovery (`Mapping`, *optional*): how the ingredients were found on the Hub (`CandidateSet.discovery`).
        intervals (`Mapping[str, Mapping[str, (low, high)]]`, *optional*): 95% bootstrap intervals of `results`.
        differences (`Mapping[str, Mapping[str, (delta, low, high)]]`, *optional*): each method minus the best
            individual, with its paired bootstrap interval.
        warnings (`Sequence[str]`, *optional*): e.g. a held-out set too small to separate the candidates.

    Returns:
        `ModelCard`: front matter with `base_model`, `base_model_relation: merge`, tags, pipeline tag and
        `model-index` results; body with the method, ingredient table, trace, results, recipe and usage.
    """
    get_method(method)  # never render an unvalidated method string (it may come from a recipe on a card)
    bases = [i.repo_id for i in ingredients if i.repo_id]
    if base_model and base_model not in bases:
        bases.append(base_model)
    pipeline_tag = pipeline_tag_for(config.get("architectures"))
    name = repo_id.split("/")[-1] if repo_id else "model-soup"
    eval_results = []
    key = f"{method}_soup"
    for split, scores in (results or {}).items():
        if key in scores:
            eval_results.append(EvalResult(
                task_type=pipeline_tag or "other", dataset_type=split, dataset_name=split, metric_type=metric,
                metric_value=float(scores[key]), dataset_split=split,
            ))
    data = ModelCardData(
        library_name="transformers",
        base_model=bases or None,
        pipeline_tag=pipeline_tag,
        tags=list(_TAGS),
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        base_model_relation="merge",
    )
    lines = [
        f"# {name}",
        "",
        f"A **{method} model soup** of {len(ingredients)} fine-tuned checkpoints, made with "
        "[hf_soups](https://github.com/hf-soups/hf_soups). " + _describe(method),
        "",
        "Model soups average the weights of models fine-tuned from one pretrained checkpoint "
        "(Wortsman et al., ICML 2022, [arXiv:2203.05482](https://arxiv.org/abs/2203.05482)): one model's "
        "inference cost, often better accuracy, above all under distribution shift.",
        "",
        "## Ingredients",
        "",
        "| # | ingredient | revision | weight | held-out score |",
        "|---|---|---|---|---|",
    ]
    for k, ing in enumerate(ingredients, 1):
        lines.append(f"| {k} | {ing.repo_id or ing.ref} | `{ing.revision or 'local'}` | "
                     f"{_fmt(ing.weight)} | {_fmt(ing.score)} |")
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
    if plot_file:
        lines += ["", f"![soup plot]({plot_file})"]
    lines += [
        "",
        "## Recipe",
        "",
        "This recipe re-creates the soup bit for bit:",
        "",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
        "",
        "Re-create it with `hf-soups recipe recipe.yaml` (or `hf-soups recipe <this repo id>`).",
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModel, pipeline",
        "",
        f'model = AutoModel.from_pretrained("{repo_id or "path/to/soup"}")',
    ]
    if pipeline_tag:
        lines.append(f'pipe = pipeline("{pipeline_tag}", model="{repo_id or "path/to/soup"}")')
    lines += ["```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _discovery_lines(discovery: Mapping[str, Any]) -> list[str]:
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


def recipe_from_card(card: ModelCard) -> Recipe:
    """Extract the recipe block from a soup's card.

    Raises:
        [`RecipeError`]: the card holds no recipe.
    """
    from .errors import RecipeError

    text = card.text
    start = text.find("```yaml\nhf_soups_recipe:")
    if start < 0:
        raise RecipeError("the model card holds no hf_soups recipe.", fix="pass a recipe YAML file instead.")
    end = text.find("```", start + 7)
    return Recipe.from_yaml(text[start + len("```yaml\n") : end])
