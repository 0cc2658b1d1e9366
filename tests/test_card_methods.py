"""The methods in the card (#25 item 6) and the card rendered from values in one place (#23 item 4): Model Stock's t
per tensor group, the learned soup by layer's weights, a method's own `card_section`, and a renderer that reads no
file."""

from __future__ import annotations

import builtins
import dataclasses
import os
import re
import shutil
import statistics

import pytest

from hf_soups import EvalSpec, soup_from_hub
from hf_soups.card import ModelFacts, render_card
from hf_soups.recipes import METHODS, MethodResult, register_method
from hf_soups.testing import sentiment_examples, write_csv


def _hand_group(name: str) -> str:
    """The tensor groups of the tiny BERT, written out by hand (independent of hf_soups' grouping)."""
    m = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
    if m:
        return f"bert.encoder.layer.{m.group(1)}"
    return ".".join(name.split(".")[:2]) if name.startswith("bert.") else name.split(".")[0]


def _table(text: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header starts with `header_start`, by first cell (code spans removed)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def stock_soup(family, tmp_path_factory):
    refs = [family["a"], family["c"], family["d"]]
    return soup_from_hub(refs, method="model_stock", base=family["base"],
                         output_dir=tmp_path_factory.mktemp("stock") / "soup")


def test_model_stock_card_has_t_per_group_equal_to_the_recipe(stock_soup):
    text = (open(os.path.join(stock_soup.output_dir, "README.md"), encoding="utf-8")).read()
    t = stock_soup.recipe.parameters["t"]
    groups: dict[str, list[float]] = {}
    for name, value in t.items():
        groups.setdefault(_hand_group(name), []).append(value)
    rows = _table(text, "| tensor group |")
    assert set(rows) == set(groups) and {"bert.embeddings", "bert.encoder.layer.0", "classifier"} <= set(rows)
    for group, ts in groups.items():
        count, low, mid, high = rows[group]
        assert int(count) == len(ts)
        assert float(low) == pytest.approx(min(ts), abs=5e-5)
        assert float(mid) == pytest.approx(statistics.median(ts), abs=5e-5)
        assert float(high) == pytest.approx(max(ts), abs=5e-5)
    assert len({r[2] for r in rows.values()}) > 1  # t really varies by group: not one number repeated
    # what was done comes from the registry, not the uniform soup's sentence or the adapters' one
    assert "averages all" not in text and "LoRA adapters" not in text
    assert METHODS["model_stock"].description in text and METHODS["model_stock"].paper in text
    assert "and their pretrained base" in text and "is an input of the soup" in text
    ingredients = _table(text, "| # | ingredient |")
    assert all(cells[2] == "per tensor" for cells in ingredients.values())  # not "0.3333"


def test_learned_by_layer_card_has_the_recipes_weights(family, tmp_path):
    refs = [family["a"], family["d"]]
    val = write_csv(tmp_path / "val.csv", sentiment_examples(10, seed=5))
    soup = soup_from_hub(refs, method="learned_by_layer", output_dir=tmp_path / "out",
                         eval_spec=EvalSpec(dataset=os.fspath(val), batch_size=4, learned_steps=2))
    text = soup.card.text
    recorded = soup.recipe.parameters["groups"]
    rows = _table(text, "| group |")
    assert list(rows) == list(recorded)
    for group, weights in recorded.items():
        assert [float(c) for c in rows[group]] == pytest.approx(weights, abs=5e-5)
    header = next(line for line in text.splitlines() if line.startswith("| group |"))
    assert header.count("|") == len(refs) + 2  # one column per ingredient
    assert "in 2 steps" in text


def _cells(row: str) -> int:
    """The table separators of a markdown row (escaped pipes are text)."""
    return len(re.findall(r"(?<!\\)\|", row))


def _toy(ctx):
    return MethodResult(ctx.plan, parameters={"secret": [1, 2, 3], "alpha": 0.25})


def _toy_section(parameters, ingredients):
    return (f"TOY SECTION: alpha={parameters['alpha']} over {len(ingredients)} ingredients, "
            f"sum={sum(parameters['secret'])}")


@pytest.fixture()
def toy_methods():
    register_method("toy_card_section", paper="https://example.org/toy", description="A toy averaging.",
                    card_section=_toy_section)(_toy)
    register_method("toy_default_section", paper="https://example.org/toy2", description="Another toy.")(_toy)
    yield
    for name in ("toy_card_section", "toy_default_section"):
        METHODS.pop(name, None)


def test_a_registered_card_section_appears(family, tmp_path, toy_methods):
    refs = [family["a"], family["d"]]
    custom = soup_from_hub(refs, method="toy_card_section", output_dir=tmp_path / "custom").card.text
    assert "TOY SECTION: alpha=0.25 over 2 ingredients, sum=6" in custom
    assert "https://example.org/toy" in custom and "A toy averaging." in custom
    default = soup_from_hub(refs, method="toy_default_section", output_dir=tmp_path / "default").card.text
    assert _table(default, "| parameter | value |") == {"alpha": ["0.25"]}  # scalars only: the list is left out


def test_default_section_escapes_outside_text():
    from hf_soups.recipes.registry import scalar_parameters_section

    out = scalar_parameters_section({"x|y": "<b>`a`</b>\n# h"}, [])
    row = out.splitlines()[2]
    assert _cells(row) == 3 and "<b>" not in row and "\n" not in row and "`a`" not in row


def test_learned_by_layer_section_escapes_names():
    from hf_soups.recipes.card_sections import learned_by_layer_section

    out = learned_by_layer_section({"groups": {"a|b\n# x": [0.5, 0.5]}, "steps": 3}, ["u|v", "<img src=x>"])
    header, _, row = out.splitlines()[2:5]
    assert _cells(header) == 4 and _cells(row) == 4 and "<img" not in header


def test_render_reads_no_file(stock_soup, tmp_path, monkeypatch):
    """The card renders from values alone: with the soup directory gone and every file read failing."""
    expected = stock_soup.card_for("alice/stock").text
    values = stock_soup.card_values("alice/stock")
    assert values.facts == ModelFacts.from_config(stock_soup.config)
    moved = tmp_path / "gone"
    shutil.copytree(stock_soup.output_dir, moved)
    soup = dataclasses.replace(stock_soup, output_dir=os.fspath(moved))
    soup = dataclasses.replace(soup, facts=ModelFacts.from_config(soup.config))
    shutil.rmtree(moved)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the card renderer read a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os.path, "exists", refuse)
    monkeypatch.setattr(os.path, "lexists", refuse)
    card = render_card(values)
    again = soup.card_for("alice/stock").text
    monkeypatch.undo()
    assert "alice/stock" in card.text and card.data.pipeline_tag == "text-classification"
    assert card.text == again == expected


def test_model_stock_section_escapes_tensor_names():
    from hf_soups.recipes.card_sections import model_stock_section

    out = model_stock_section({"t": {"x|y\n# z.weight": 0.5, "`a`.bias": 0.25}, "singular": ["<b>|</b>"]}, [])
    rows = [line for line in out.splitlines() if line.startswith("| ") and "tensor group" not in line]
    assert len(rows) == 2 and all(_cells(r) == 6 for r in rows)
    assert "<b>" not in out and "\n# z" not in out


def test_cli_soup_help_lists_every_registered_method(capsys, toy_methods):
    from hf_soups.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["soup", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare on collapsed blanks
    methods = text.split("methods:", 1)[1]
    for entry in METHODS.values():  # the toy methods registered by the fixture too: no hand-written list
        line = f"{entry.name}: {' '.join(entry.description.split())}"
        assert line in methods and f"paper: {entry.paper}" in methods, entry.name
