"""hf_soups.diagnose / `hf-soups diagnose`: distances and cosines against torch, curves against direct evaluations."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hf_soups
from hf_soups.cli.main import EXIT_CODES, main
from hf_soups.diagnosis import Curve, Diagnosis, _one_basin
from hf_soups.errors import InvalidArgumentError
from hf_soups.testing import make_tiny_bert, perturb_checkpoint, sentiment_examples

from conftest import state_dict_of


def _flat(path, names):
    sd = state_dict_of(path)
    return torch.cat([sd[n].double().flatten() for n in names])


def _float_names(path):
    return [n for n, t in state_dict_of(path).items() if t.is_floating_point()]


def test_distances_and_cosines_equal_torch(family):
    refs = [family["a"], family["b"], family["c"]]  # sharded fp32, bf16, sharded differently
    found = hf_soups.diagnose(refs, base=family["base"], progress=False)
    names = _float_names(family["a"])
    thetas = [_flat(p, names) for p in refs]
    base = _flat(family["base"], names)
    mean_norm = sum(float(t.norm()) for t in thetas) / 3
    taus = [t - base for t in thetas]
    for i in range(3):
        for j in range(3):
            assert found.relative_distances[i][j] == pytest.approx(float((thetas[i] - thetas[j]).norm()) / mean_norm,
                                                                  rel=1e-6, abs=1e-12)
            want = float(taus[i] @ taus[j] / (taus[i].norm() * taus[j].norm()))
            assert found.cosines[i][j] == pytest.approx(want, rel=1e-6)
        assert found.task_vector_norms[i] == pytest.approx(float(taus[i].norm() / base.norm()), rel=1e-6)
    free = hf_soups.diagnose(refs, progress=False)
    assert free.cosines is None and free.task_vector_norms is None and free.base is None
    assert sum(free.relative_distances, ()) == pytest.approx(sum(found.relative_distances, ()), rel=1e-6)
    text = str(found)
    assert "Task-vector cosines" in text and "pass held-out data" in text
    assert json.loads(found.to_json())["cosines"][0][0] == pytest.approx(1.0)


def _score_state(path, state, data):
    """The accuracy of a model whose weights are `state`, computed with transformers directly."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path).float().eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        logits = model(**tok(data["text"], return_tensors="pt", padding=True)).logits
    return float((logits.argmax(-1) == torch.tensor(data["label"])).float().mean())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Three far-apart perturbations of one tiny classifier, and data labelled by the first one's predictions: the
    scores differ and move along every line (no training needed)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("tuned")
    base = make_tiny_bert(root / "base", seed=0, initializer_range=0.5)
    refs = [perturb_checkpoint(base, root / f"ft{i}", seed=i, scale=0.3) for i in range(3)]
    data = sentiment_examples(32, seed=5)
    model = AutoModelForSequenceClassification.from_pretrained(refs[0]).eval()
    with torch.no_grad():
        logits = model(**AutoTokenizer.from_pretrained(refs[0])(data["text"], return_tensors="pt", padding=True)).logits
    data["label"] = logits.argmax(-1).tolist()
    return refs, data


def test_curves_endpoints_and_midpoint_equal_direct_evaluation(tuned, tmp_path):
    refs, data = tuned
    found = hf_soups.diagnose(refs, eval_dataset=data, progress=False)
    direct = [_score_state(p, None, data) for p in refs]
    tol = 1 / len(data["label"]) + 1e-9  # one example may flip on an fp32 rounding tie
    assert found.scores == pytest.approx(direct, abs=tol)
    order = sorted(range(3), key=lambda i: -found.scores[i])
    pair, uniform = found.curves
    assert pair.alphas == tuple(i / 10 for i in range(11)) and uniform.end == "uniform soup"
    assert pair.start == uniform.start == found.names[order[0]] and pair.end == found.names[order[1]]
    assert pair.scores[0] == pytest.approx(direct[order[0]], abs=tol)
    assert pair.scores[-1] == pytest.approx(direct[order[1]], abs=tol)
    assert uniform.scores[0] == pair.scores[0]
    sds = [state_dict_of(p) for p in refs]
    floats = [n for n, t in sds[0].items() if t.is_floating_point()]
    mid = {n: (sds[order[0]][n].float() + sds[order[1]][n].float()) / 2 for n in floats}
    assert pair.scores[5] == pytest.approx(_score_state(refs[0], mid, data), abs=tol)
    soup = {n: sum(sd[n].float() for sd in sds) / 3 for n in floats}
    assert uniform.scores[-1] == pytest.approx(_score_state(refs[0], soup, data), abs=tol)
    assert len(set(found.scores)) > 1 and len(set(pair.scores + uniform.scores)) > 2  # the test sees real movement
    assert "the midpoint scores" in found.reading
    png = found.plot(tmp_path / "basin.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scores, up, one", [
    ((0.83, 0.82, 0.81, 0.82, 0.82), True, True),   # the example: a 0.01 dip is one basin
    ((0.83, 0.6, 0.5, 0.6, 0.82), True, False),     # a barrier
    ((0.83, 0.86, 0.88, 0.86, 0.82), True, True),   # the line beats both ends
    ((0.40, 0.45, 0.41, 0.43, 0.42), False, True),  # MSE (lower is better): the midpoint near the worse end
    ((0.40, 0.7, 0.9, 0.6, 0.42), False, False),    # MSE barrier
])
def test_basin_reading(scores, up, one):
    assert _one_basin(scores, up) is one
    line = Curve("x", "y", (0.0, 0.25, 0.5, 0.75, 1.0), scores, one).reading(up)
    assert f"the midpoint scores {scores[2]:.4g} against {scores[0]:.4g} and {scores[-1]:.4g}" in line
    assert ("one basin" in line) is one and ("barrier" in line) is (not one)


def test_diagnose_refuses_a_single_ref(family):
    for refs in ([family["a"]], family["a"]):
        with pytest.raises(InvalidArgumentError, match="two or more"):
            hf_soups.diagnose(refs)


def test_cli_diagnose_prints_table_and_json_and_writes_plot(family, tmp_path, capsys):
    args = ["diagnose", family["a"], family["d"], "--base", family["base"]]
    assert main([*args, "--plot", str(tmp_path / "d.png")]) == 0
    printed = capsys.readouterr().out
    assert "Relative distances" in printed and "Task-vector cosines" in printed
    assert (tmp_path / "d.png").stat().st_size > 0
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = hf_soups.diagnose([family["a"], family["d"]], base=family["base"], progress=False).to_dict()
    assert data["relative_distances"] == want["relative_distances"] and data["cosines"] == want["cosines"]
    assert main(["diagnose", family["a"]]) == dict(EXIT_CODES)[InvalidArgumentError] != 1


def test_diagnosis_is_exported_and_json_ready():
    d = Diagnosis(("x", "y"), "b", ((0.0, 0.1), (0.1, 0.0)), ((1.0, math.nan), (math.nan, 1.0)), (0.1, 0.0))
    assert hf_soups.diagnose.__name__ == "diagnose" and hf_soups.Diagnosis is Diagnosis
    assert json.loads(d.to_json())["cosines"] == [[1.0, None], [None, 1.0]]


def test_diagnose_hub_refs_equal_local(api, hub, family):
    """Hub repos (and a Hub base) are pinned, downloaded and read like local directories: the same numbers."""
    from conftest import publish

    for key in ("a", "d", "base"):
        publish(api, family[key], f"alice/diag-{key}")
    remote = hf_soups.diagnose(["alice/diag-a", "alice/diag-d"], base="alice/diag-base", progress=False)
    local = hf_soups.diagnose([family["a"], family["d"]], base=family["base"], progress=False)
    shas = {key: api.model_info(f"alice/diag-{key}").sha for key in ("a", "d", "base")}  # pinned to the commit
    assert remote.names == (f"alice/diag-a@{shas['a']}", f"alice/diag-d@{shas['d']}")
    assert remote.base == f"alice/diag-base@{shas['base']}"
    assert remote.relative_distances == local.relative_distances and remote.cosines == local.cosines
