"""Fuzz target "card strings" (issue #24): arbitrary text in every outside field of a soup's card.

Repo ids and rejection reasons via discovery records, collection slugs and queries, label names (compatibility
warnings), dataset, metric and column names, ingredient references: whatever they hold, the recipe read back from the
rendered card equals the recipe written, the YAML front matter parses back to exactly what was written, the card has
exactly one recipe block, and its markdown structure is that of a card with plain text (see
`tests/test_r3_card.py::assert_card_exact`). The recipe's own strings are fuzzed too (single-line: what a recipe
holds), so no recorded string can close the recipe's fence.

Same budget variable and per-example time limit as `tests/test_fuzz.py` (HF_SOUPS_FUZZ_EXAMPLES; a card takes longer
than a header, so this target runs a thirtieth of it, at least 50).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import _SETTINGS, EXAMPLES, _bounded
from test_r3_card import assert_card_exact, found, make_recipe, render_card

_CARD_SETTINGS = settings(_SETTINGS, max_examples=max(EXAMPLES // 30, 50))
#: Pieces of markdown, YAML and front matter syntax, so that examples hit the structures, not only random letters.
_SYNTAX = ["\n", "\r\n", "\r", "```", "~~~", "````yaml\n", "---", "# ", "|", "<", ">", "<details>", "&lt;", "\\",
           "hf_soups_recipe:", "hf_soups_recipe_sha256: ", "yaml\n", "- ", "1. ", "> ", "[a](b)", "![", "*", "_", "$$",
           "\u2028", "\x85", "\u202e", "\t", " ", "a", "é", "🍲", ":", "'", '"', "{", "}", "\x00", "\x1b"]
outside = st.one_of(st.text(), st.lists(st.sampled_from(_SYNTAX), max_size=12).map("".join),
                    st.lists(st.one_of(st.sampled_from(_SYNTAX), st.text(max_size=4)), max_size=8).map("".join))
#: What a recipe field may hold: one line of text (the recipe refuses control characters).
recorded = st.one_of(st.text(min_size=1, max_size=80), st.lists(st.sampled_from(_SYNTAX), min_size=1, max_size=10)
                     .map("".join)).map(lambda s: "".join(c for c in s if ord(c) >= 32) or "x")


@_CARD_SETTINGS
@given(s=outside, r=recorded)
@_bounded
def test_card_strings_cannot_steer_the_recipe_or_the_front_matter(s, r):
    recipe = make_recipe(r)
    assert_card_exact(render_card(s, recipe), recipe, plain="plain" if s else "")


@_CARD_SETTINGS
@given(s=outside)
@_bounded
def test_discovery_table_has_one_line_per_candidate(s):
    assert len(found(s).to_table().splitlines()) == 1 + 1 + 3
