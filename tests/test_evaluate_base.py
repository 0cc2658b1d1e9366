"""WiSE-FT's base in `Soup.evaluate` is the soup's pinned base: the same repo at the same sha the recipe records,
downloaded through the soup's own Hub access and cache; an explicit `base=` wins; a soup without one has no rows."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import publish
from datasets import Dataset
from safetensors.torch import load_file, save_file

from hf_soups import EvaluationError, HubAccess, soup_from_hub
from hf_soups.merge.options import MergeOptions
from hf_soups.testing import sentiment_examples

QUIET = MergeOptions(progress=False)
WISE = {f"wise_ft@{a:g}" for a in (0.0, 0.25, 0.5, 0.75, 1.0)}


def _data() -> dict[str, Dataset]:
    return {"val": Dataset.from_dict(sentiment_examples(40, seed=5))}


def _flipped(src: str, dst: str) -> str:
    """A copy of checkpoint `src` whose classifier is negated: it predicts the other class wherever `src` does not
    tie, so a WiSE-FT row from it cannot score like one from `src` (unless `src` scores exactly one half)."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    tensors = load_file(path)
    save_file({k: -v if k.startswith("classifier.") else v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    return str(dst)


def _requests_for(hub, repo: str, since: int) -> list[str]:
    return [path for _, path, _ in hub.requests[since:] if repo in path]


def test_evaluate_defaults_wise_ft_to_the_pinned_sha_even_after_the_base_moves(hub, api, family, tmp_path):
    sha = publish(api, family["base"], "alice/eb-base")
    publish(api, family["a"], "alice/eb-a")
    publish(api, family["d"], "alice/eb-d")
    cache = tmp_path / "cache"
    soup = soup_from_hub(["alice/eb-a", "alice/eb-d"], base="alice/eb-base", output_dir=tmp_path / "soup",
                         merge_options=QUIET, access=HubAccess(cache_dir=cache))
    assert soup.recipe.base == f"alice/eb-base@{sha}"
    moved = publish(api, _flipped(family["base"], tmp_path / "flipped"), "alice/eb-base")  # main moves on
    assert moved != sha

    # a request without WiSE-FT never touches the base
    since = len(hub.requests)
    plain = soup.evaluate(_data(), methods=["soup"], bootstrap=0, progress=False)
    assert not WISE & set(plain.results["val"]) and plain.base is None
    assert _requests_for(hub, "eb-base", since) == []

    # the default: WiSE-FT rows from the pinned sha, through the soup's cache, never main's new commit
    since = len(hub.requests)
    default = soup.evaluate(_data(), bootstrap=0, progress=False)
    assert WISE <= set(default.results["val"]) and default.base == f"alice/eb-base@{sha}"
    asked = _requests_for(hub, "eb-base", since)
    assert asked and all(sha in p for p in asked) and not any(moved in p or "/main" in p for p in asked), asked
    assert os.path.isfile(cache / "models--alice--eb-base" / "snapshots" / sha / "model.safetensors")

    # bit-equal to the original base files passed explicitly; the moved base scores otherwise and wins when given
    explicit = soup.evaluate(_data(), bootstrap=0, progress=False, base=family["base"])
    assert explicit.results == default.results and explicit.base == str(family["base"])
    flipped = soup.evaluate(_data(), methods=["wise_ft"], bootstrap=0, progress=False, base=tmp_path / "flipped")
    assert flipped.results["val"]["wise_ft@0"] != default.results["val"]["wise_ft@0"]
    assert flipped.results["val"]["wise_ft@1"] == default.results["val"]["wise_ft@1"]  # the soup itself

    # a streamed soup (ingredients not on disk) is refused before its base is downloaded
    streamed = soup_from_hub(["alice/eb-a", "alice/eb-d"], base=f"alice/eb-base@{sha}", output_dir=tmp_path / "s",
                             merge_options=MergeOptions(stream=True, progress=False),
                             access=HubAccess(cache_dir=tmp_path / "streamed-cache"))
    assert streamed.recipe.base == f"alice/eb-base@{sha}"
    since = len(hub.requests)
    with pytest.raises(EvaluationError, match="stream=False"):
        streamed.evaluate(_data(), bootstrap=0, progress=False)
    assert _requests_for(hub, "eb-base", since) == []


def test_a_local_pinned_base_is_the_default_too_and_a_method_that_read_it_keeps_it(family, tmp_path):
    refs = [str(family["a"]), str(family["d"])]
    for method in ("uniform", "model_stock"):
        soup = soup_from_hub(refs, method, base=str(family["base"]), output_dir=tmp_path / method, merge_options=QUIET)
        default = soup.evaluate(_data(), methods=["wise_ft", "soup"], bootstrap=0, progress=False)
        explicit = soup.evaluate(_data(), methods=["wise_ft", "soup"], bootstrap=0, progress=False,
                                 base=family["base"])
        assert WISE <= set(default.results["val"]), method
        assert default.results == explicit.results and default.base == str(family["base"]), method


def test_a_soup_without_a_pinned_base_has_no_wise_ft_rows_and_a_fix_naming_both_ways(family, tmp_path):
    soup = soup_from_hub([str(family["a"]), str(family["d"])], output_dir=tmp_path / "soup", merge_options=QUIET)
    assert soup.pinned_base is None and soup.base_checkpoint() is None
    report = soup.evaluate(_data(), bootstrap=0, progress=False)
    assert not any(m.startswith("wise_ft") for m in report.results["val"]) and report.base is None
    with pytest.raises(EvaluationError) as err:
        soup.evaluate(_data(), methods=["wise_ft@0.5"], bootstrap=0, progress=False)
    assert "soup_from_hub(" in str(err.value) and "base=" in str(err.value) and "evaluate(base=" in str(err.value)
    given = soup.evaluate(_data(), methods=["wise_ft"], bootstrap=0, progress=False, base=family["base"])
    assert WISE == set(given.results["val"]) and given.base == str(family["base"])
