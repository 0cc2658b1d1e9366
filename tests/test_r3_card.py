"""Reliability round 3 (issue #24): outside text cannot steer a soup's card, the recipe read back from a card is the
one hf_soups wrote, a callable metric is recorded as what it is, and every "How to use" snippet names a pipeline the
installed transformers has.

The card checks parse the rendered card with independent parsers: `huggingface_hub.ModelCard` and `yaml` for the
front matter, markdown-it (CommonMark + tables) for the body, whose block structure must not depend on the text.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import pytest
import yaml
from conftest import publish
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt

from hf_soups import RecipeError, SoupError
from hf_soups.card import build_card, escape_markdown, recipe_from_card, usage_lines
from hf_soups.compat import Problem
from hf_soups.errors import EvaluationError
from hf_soups.evaluation.metrics import UserCallableMetric, resolve_metric
from hf_soups.hub.discovery import Candidate, CandidateSet, DiscoveryQuery
from hf_soups.recipes import Recipe
from hf_soups.recipes.recipe import BatchNormCalibration, EvalSpec
from hf_soups.refs import Ingredient

SHA = "0123456789abcdef0123456789abcdef01234567"
_MD = MarkdownIt("commonmark").enable("table")
# the attack of issue #24: a collection item id holding a fenced recipe with the attacker's ingredients and weights
FORGED = ("evil/model\n\n```yaml\nhf_soups_recipe:\n  method: weighted\n  ingredients:\n  - evil/x@" + "f" * 40
          + "\n  weights:\n  - 1.0\n```\n")


def make_recipe(text: str = "val.csv") -> Recipe:
    """A recipe whose evaluation and BatchNorm records hold `text` (single-line: what a recipe can hold)."""
    return Recipe(method="uniform", ingredients=(f"alice/a@{SHA}", f"alice/b@{SHA}"), weights=(0.5, 0.5),
                  evaluation=EvalSpec(dataset=text, split=text, metric=text, text_column=text, label_column=text),
                  batchnorm=BatchNormCalibration(dataset=text, split=text, image_column=text, examples=3,
                                                 sha256="a" * 64))


def render_card(s: str, recipe: Recipe | None = None, *, architectures: tuple[str, ...] = (
        "BertForSequenceClassification",)) -> ModelCard:
    """A card with the outside text `s` in every field hf_soups renders from outside: ingredient and repo ids,
    collection/listing content, label names (compatibility warnings), dataset, metric and column names."""
    ings = [Ingredient(ref=f"user/{s}", repo_id=f"user/{s}", revision=SHA, weight=0.5, score=0.25),
            Ingredient(ref=s, weight=0.5, score=0.5)]
    results = {s: {"uniform_soup": 0.5, "best_individual": 0.25, f"ingredient:{s}": 0.25}, "ood": {"uniform_soup": 0.4}}
    return build_card(
        method="uniform", ingredients=ings, config={"architectures": list(architectures)},
        recipe=recipe or make_recipe(), base_model=s, repo_id=f"alice/{s}",
        trace=[{"ingredient": s, "score": 0.5, "accepted": True, "soup_size": 1}], results=results, metric=s,
        discovery=found(s).discovery,
        intervals={s: {"uniform_soup": (0.4, 0.6)}}, differences={s: {"uniform_soup": (0.25, 0.1, 0.3)}},
        warnings=[s, f"- {s}"], notes=[s], datasets={s: {"id": s, "config": s, "split": s, "name": s}},
        compat_warnings=[Problem(ingredient=s, field="id2label", message=f"label names differ: {s!r} vs {s}",
                                 fix="", severity="warning")],
        inherited={"license": s, "datasets": [s], "language": [s]},
    )


def found(s: str) -> CandidateSet:
    """Discovery records (as a listing or a collection gives them) holding `s` in every string."""
    query = DiscoveryQuery(base_model=s, author=s, task=s, search=s, collection=s, limit=3, date=s)
    return CandidateSet(ingredients=(Candidate(repo_id=s, sha=SHA),),
                        rejected=(Candidate(repo_id=s, sha=s, verdict="rejected", reason=f"labels differ: {s}"),
                                  Candidate(repo_id=f"{s}/x", sha=None, verdict="rejected", reason=s)), query=query)


def _structure(text: str) -> list[tuple[str, str, str]]:
    """The body's structure: every block token (type, tag, fence info), and every link, image and inline HTML (with
    its target), in order."""
    out = []
    for t in _MD.parse(text):
        if t.block and t.type != "inline":
            out.append((t.type, t.tag, t.info))
        out += [(c.type, c.tag, str(c.attrs)) for c in t.children or []
                if c.type in ("link_open", "image", "html_inline")]
    return out


@functools.cache
def _plain_structure(plain: str) -> list[tuple[str, str, str]]:
    return _structure(render_card(plain, make_recipe("plain")).text)


def assert_card_exact(card: ModelCard, recipe: Recipe, plain: str = "plain") -> None:
    """The rendered card parses back to what was written: recipe, front matter, and the block structure of the card
    with `plain` text (no fence, heading, HTML block, list or table row added or broken by the outside text; an
    empty text leaves out what an empty value leaves out, e.g. an evaluation set's empty dataset id)."""
    text = str(card)
    parsed = ModelCard(text)
    assert recipe_from_card(parsed) == recipe
    assert len(re.findall(r"^\s*hf_soups_recipe\s*:", parsed.text, re.M)) == 1
    front = text.split("\n---\n", 1)[0].removeprefix("---\n")
    assert yaml.safe_load(front) == card.data.to_dict() == parsed.data.to_dict()
    assert _structure(parsed.text) == _plain_structure(plain)
    tokens = _MD.parse(parsed.text)
    assert not [t for t in tokens if t.type == "html_block"]
    hidden = [c for c in parsed.text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cn")]
    assert not hidden  # no other line break, and nothing that hides or reorders text (bidi overrides)
    fences = [t for t in tokens if t.type == "fence"]
    assert [t.info for t in fences] == ["yaml", "python"] and fences[0].content.startswith("hf_soups_recipe:\n")


@pytest.mark.parametrize("s", [
    FORGED,  # the collection item
    FORGED.replace("```", "~~~"),  # a tilde fence
    "x\n````yaml\nhf_soups_recipe: {method: weighted}\n````",  # a longer fence, flow style
    "x\n---\nlicense: evil\n---\n",  # front matter
    "x\n# Recipe\n<details><script>alert(1)</script>",  # a heading and an HTML block
    "a | b | c\n|---|---|",  # a table row
    "```",  # a bare fence that would close the recipe's code span
    "[click](https://evil.example) ![x](y.png) <https://evil.example>",  # links and images
    "x\u2028```yaml\u2029hf_soups_recipe:\x85\u202eevil",  # unicode line breaks and a bidi override
    "1. item\n- item\n> quote\n=== \\",  # list, quote and setext markers, a trailing backslash
])
def test_outside_text_cannot_steer_the_card(s):
    recipe = make_recipe(s.replace("\n", " ").replace("\x85", " ").replace("\u2028", " ").replace("\u2029", " "))
    assert_card_exact(render_card(s, recipe), recipe)


def test_forged_item_in_a_card_file_is_not_the_recipe(tmp_path):
    """`load_recipe(README.md)` (as `hf-soups recipe` reads it) returns the recipe hf_soups wrote."""
    from hf_soups import load_recipe

    recipe = make_recipe()
    (tmp_path / "README.md").write_text(str(render_card(FORGED, recipe)), encoding="utf-8")
    assert load_recipe(tmp_path / "README.md") == recipe
    assert load_recipe(tmp_path) == recipe  # a folder without recipe.yaml reads its card


def test_discovery_table_keeps_one_row_per_candidate():
    table = found(FORGED + "\x1b[2J").to_table()  # and a terminal escape sequence
    assert len(table.splitlines()) == 1 + 1 + 3 and "\x1b" not in table


def test_forged_item_on_the_hub_and_a_doubled_card_on_the_cli(hub, api, tmp_path, capsys, monkeypatch):
    """The issue's route: `load_recipe(repo)` reads the pushed card; `hf-soups recipe` refuses a card with two
    recipes in one line (exit 10, a SoupError, never 1), before anything is downloaded."""
    from hf_soups import load_recipe
    from hf_soups.cli.main import main

    recipe = make_recipe()
    (tmp_path / "pushed").mkdir()
    (tmp_path / "pushed" / "README.md").write_text(str(render_card(FORGED, recipe)), encoding="utf-8")
    publish(api, tmp_path / "pushed", "alice/r3-forged-card")
    assert load_recipe("alice/r3-forged-card", endpoint=hub.url) == recipe
    text = _card_with_blocks(recipe)
    block = _block_of(text)
    (tmp_path / "README.md").write_text(text.replace("## Ingredients", block + "\n## Ingredients"), encoding="utf-8")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert main(["recipe", str(tmp_path / "README.md"), "--output", str(tmp_path / "out")]) == 10
    err = capsys.readouterr().err
    assert err.startswith("hf-soups: error: this model card holds 2 hf_soups recipes") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_report_tables_keep_their_rows():
    """`SoupReport.to_markdown` (set and ingredient names are the user's) and `to_table` keep one row per method."""
    from hf_soups.evaluation.report import SoupReport

    report = SoupReport({FORGED: {"uniform_soup": 0.5, f"ingredient:{FORGED}": 0.25}}, metric=FORGED)
    tokens = _MD.parse(report.to_markdown())
    assert [t.type for t in tokens].count("tr_open") == 3 and [t.type for t in tokens].count("td_open") == 4
    assert not [t for t in tokens if t.type in ("fence", "html_block", "heading_open")]
    assert len(report.to_table().splitlines()) == 1 + 1 + 2  # the settings line, the header, two methods


def test_escape_markdown_is_one_line_and_literal():
    for s in (FORGED, "|", "`", "~~~", "<b>", "#", "---", "& &amp;"):
        out = escape_markdown(s)
        assert "\n" not in out and not re.search(r"(?<!\\)[`|~#<>]", out)
        tokens = _MD.parse(f"| h |\n|---|\n| {out} |")
        cell = [t for t in tokens if t.type == "inline"][-1]
        assert "".join(c.content for c in cell.children) == s.replace("\n", " ").strip()  # the text itself
    assert escape_markdown("user/model-1", code=True) == "`user/model-1`"


def _card_with_blocks(recipe: Recipe) -> str:
    return str(render_card("plain", recipe))


def _block_of(text: str) -> str:
    """The fenced recipe block of a card's text, fences included."""
    start = text.index("```yaml\n")
    return text[start : text.index("```\n", start + 8) + 4]


def test_two_recipe_blocks_are_refused():
    recipe = make_recipe()
    text = _card_with_blocks(recipe)
    block = _block_of(text)
    for doubled in (text + "\n" + block, text.replace("## Recipe", block + "\n## Recipe")):
        with pytest.raises(RecipeError, match="2 hf_soups recipes"):
            recipe_from_card(ModelCard(doubled))
    # a second block without its digest (as an older card had) is refused too
    old = re.sub(r"\nhf_soups_recipe_sha256: [0-9a-f]{64}", "", block)
    with pytest.raises(RecipeError, match="2 hf_soups recipes"):
        recipe_from_card(ModelCard(text.replace("## Ingredients", old + "\n## Ingredients")))


def test_recipe_digest_is_checked_and_older_cards_still_read():
    recipe = make_recipe()
    text = _card_with_blocks(recipe)
    digest = re.search(r"hf_soups_recipe_sha256: ([0-9a-f]{64})", text).group(1)
    body = recipe.to_yaml()
    assert digest == hashlib.sha256(body.encode()).hexdigest()  # sha256 of the canonical recipe YAML
    edited = text.replace("  - 0.5\n  - 0.5\n", "  - 0.9\n  - 0.1\n", 1)
    assert edited != text
    with pytest.raises(RecipeError, match="does not match the sha256"):
        recipe_from_card(ModelCard(edited))
    older = re.sub(r"\nhf_soups_recipe_sha256: [0-9a-f]{64}", "", text)  # before digests: one block, no digest
    assert recipe_from_card(ModelCard(older)) == recipe
    extra = text.replace("hf_soups_recipe_sha256:", "other: 1\nhf_soups_recipe_sha256:")  # not what hf_soups writes
    with pytest.raises(SoupError):
        recipe_from_card(ModelCard(extra))


def _all_architectures() -> set[str]:
    """Every model class transformers' Auto mappings name (independent of hf_soups' own table)."""
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for attr in dir(modeling_auto):
        mapping = getattr(modeling_auto, attr)
        if attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES") and isinstance(mapping, dict):
            for value in mapping.values():
                names.update(value if isinstance(value, (list, tuple)) else [value])
    return {n for n in names if isinstance(n, str)}


def test_every_usage_snippet_names_an_installed_pipeline_and_class():
    import transformers
    from transformers.pipelines import PIPELINE_REGISTRY

    tasks = set(PIPELINE_REGISTRY.get_supported_tasks())
    archs = _all_architectures()
    from hf_soups.evaluation.tasks import TASKS

    suffixes = {suffix for task in TASKS for suffix in task.architectures}
    assert {s for s in suffixes if any(a.endswith(s) for a in archs)} == suffixes  # every entry is exercised
    seen = 0
    for arch in sorted(a for a in archs if any(a.endswith(s) for s in suffixes)):
        for config in ({"architectures": [arch]}, {"architectures": [arch], "auto_map": {"AutoModel": "m.M"}}):
            code = "\n".join(usage_lines(config, "alice/soup")).split("```python\n", 1)[1].split("\n```", 1)[0]
            compile(code, arch, "exec")
            for task in re.findall(r'pipeline\("([^"]+)"', code):
                assert task in tasks, (arch, task)
            for name in re.search(r"from transformers import (.*)", code).group(1).split(", "):
                assert hasattr(transformers, name), (arch, name)
            seen += 1
    assert seen > 50
    # the case: a QA soup's card has no `pipeline("question-answering")` where transformers lacks it
    qa = str(render_card("plain", architectures=("BertForQuestionAnswering",)))
    assert ("question-answering" in tasks) == ('pipeline("question-answering"' in qa)


def _f1(predictions, references):
    return float(sum(int(p == r) for p, r in zip(predictions, references)) / max(len(references), 1))


class _Scorer:
    def __call__(self, predictions, references):
        return _f1(predictions, references)


@pytest.mark.parametrize("metric, name", [
    (_f1, "test_r3_card._f1"),
    (lambda p, r: _f1(p, r), "test_r3_card.<lambda>"),
    (functools.partial(_f1), "functools.partial(test_r3_card._f1)"),
    (_Scorer(), "test_r3_card._Scorer"),
])
def test_callable_metric_is_recorded_as_not_replayable(metric, name):
    spec = EvalSpec(dataset="val.csv", metric=metric)
    assert spec.metric_name == name and not spec.metric_replayable
    recipe = Recipe(method="greedy", ingredients=(f"alice/a@{SHA}",), weights=(1.0,), evaluation=spec)
    data = yaml.safe_load(recipe.to_yaml())["hf_soups_recipe"]["evaluation"]
    assert data["metric"] is None and data["metric_callable"] == name
    back = Recipe.from_yaml(recipe.to_yaml())
    assert back.evaluation.metric == UserCallableMetric(name) and back.to_yaml() == recipe.to_yaml()
    with pytest.raises(EvaluationError, match="pass the callable again"):
        resolve_metric(back.evaluation.metric)
    assert resolve_metric(metric).name == name and resolve_metric(metric)([1, 0], [1, 1]) == 0.5
    # a named metric stays replayable by its name
    assert Recipe.from_yaml(Recipe(method="greedy", ingredients=(f"alice/a@{SHA}",), weights=(1.0,),
                                   evaluation=EvalSpec(dataset="v", metric="f1")).to_yaml()).evaluation.metric == "f1"
    with pytest.raises(RecipeError, match="metric_callable"):
        Recipe.from_yaml(recipe.to_yaml().replace("metric: null", "metric: f1"))


def test_soup_with_callable_metric_evaluates_and_replay_asks_for_it(family, tmp_path):
    from datasets import Dataset

    from hf_soups import MergeOptions, replay_recipe, soup_from_hub
    from hf_soups.testing import sentiment_examples

    data = Dataset.from_dict(sentiment_examples(16, seed=1))
    scorer = _Scorer()
    soup = soup_from_hub([family["a"], family["d"]], method="greedy", eval_dataset=data,
                         eval_spec=EvalSpec(metric=scorer),
                         output_dir=tmp_path / "g", merge_options=MergeOptions(progress=False))
    assert soup.recipe.to_dict()["evaluation"]["metric_callable"] == "test_r3_card._Scorer"
    report = soup.evaluate({"val": data}, methods=["soup"], bootstrap=0, progress=False)  # was "cannot load 'metric'"
    assert report.metric == "test_r3_card._Scorer"
    again = replay_recipe(soup.recipe, tmp_path / "r", allow_local=True, progress=False)
    with pytest.raises(EvaluationError, match="user callable 'test_r3_card._Scorer'.*pass the callable again"):
        again.evaluate({"val": data}, methods=["soup"], bootstrap=0, progress=False)
    assert again.evaluate({"val": data}, methods=["soup"], bootstrap=0, progress=False, metric=scorer).results
