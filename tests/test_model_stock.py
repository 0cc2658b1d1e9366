"""Model Stock and the streaming statistics pass, against independent torch computations in fp64."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_soups.checkpoint.reader import open_checkpoint
from hf_soups.errors import SoupError
from hf_soups.merge.stats import collect_stats
from hf_soups.recipes.model_stock import model_stock_state_dict, stock_plan, summarise_ratios

SHAPES = {"emb.weight": (40, 16), "layer.0.dense.weight": (16, 16), "layer.0.dense.bias": (16,),
          "layer.1.dense.weight": (16, 16), "layer.1.dense.bias": (16,), "head.weight": (3, 16)}


def _save(path, tensors: dict[str, torch.Tensor]) -> str:
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"))
    return os.fspath(path)


def _shared_family(root, k: int, cos: float = 0.4, seed: int = 0, dtype=torch.float32, base_extra=None):
    """A base and k fine-tunes θ_i = base + √cos·shared + √(1−cos)·noise_i (unit directions): pairwise task-vector
    cosines ≈ cos."""
    gen = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    base["steps"] = torch.tensor([7], dtype=torch.int64)
    shared = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    paths = []
    for i in range(k):
        tensors = {}
        for n, s in SHAPES.items():
            noise = torch.randn(s, generator=gen)
            step = math.sqrt(cos) * shared[n] / shared[n].norm() + math.sqrt(1 - cos) * noise / noise.norm()
            tensors[n] = (base[n] + 0.1 * step).to(dtype)
        tensors["steps"] = torch.tensor([7 + i], dtype=torch.int64)
        paths.append(_save(root / f"ft{i}", tensors))
    base = {n: v.to(dtype) if v.is_floating_point() else v for n, v in base.items()}
    if base_extra is not None:
        base_extra(base)
    return _save(root / "base", base), paths


def _reference(base_path: str, paths: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Model Stock written from the paper's formula, per tensor in fp64 (mergekit's edge rules)."""
    base = load_file(os.path.join(base_path, "model.safetensors"))
    fts = [load_file(os.path.join(p, "model.safetensors")) for p in paths]
    k = len(fts)
    out, ts = {}, {}
    for name, t0 in fts[0].items():
        if not t0.is_floating_point():
            out[name] = base[name]
            continue
        thetas = [f[name].double().flatten() for f in fts]
        if name not in base:
            out[name] = (sum(thetas) / k).reshape(t0.shape).to(t0.dtype)
            continue
        b = base[name].double().flatten()
        taus = [th - b for th in thetas]
        cosines = [float(torch.clamp(a @ c / torch.clamp(a.norm() * c.norm(), min=1e-6), -1, 1))
                   for a, c in itertools.combinations(taus, 2)]
        cos = sum(cosines) / len(cosines)
        den = 1 + (k - 1) * cos
        t = 0.0 if abs(den) < 1e-6 else k * cos / den
        ts[name] = t
        out[name] = (t * sum(thetas) / k + (1 - t) * b).reshape(t0.shape).to(t0.dtype)
    return out, ts


def _open(paths):
    return [open_checkpoint(p) for p in paths]


@pytest.fixture()
def small_chunks(monkeypatch):
    monkeypatch.setenv("HF_SOUPS_CHUNK_ELEMENTS", "37")  # several chunks per tensor, a ragged last one


@pytest.mark.parametrize("k", [2, 4])
def test_stats_pass_equals_torch(tmp_path, small_chunks, k):
    base_path, paths = _shared_family(tmp_path, k)
    stats = collect_stats(_open(paths), open_checkpoint(base_path), progress=False)
    free = collect_stats(_open(paths), progress=False)
    base = load_file(os.path.join(base_path, "model.safetensors"))
    fts = [load_file(os.path.join(p, "model.safetensors")) for p in paths]
    assert list(stats.tensors) == [n for n in fts[0] if fts[0][n].is_floating_point()]
    for name, ts in stats.tensors.items():
        thetas = [f[name].double().flatten() for f in fts]
        taus = [th - base[name].double().flatten() for th in thetas]
        for i, j in itertools.product(range(k), repeat=2):
            assert ts.dots[i][j] == pytest.approx(float(taus[i] @ taus[j]), rel=1e-12, abs=1e-12)
            want = float((thetas[i] - thetas[j]).norm() ** 2)
            assert ts.sq_distances[i][j] == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert free.tensors[name].sq_distances[i][j] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert ts.sq_norms == pytest.approx([float(th @ th) for th in thetas], rel=1e-12)
        assert ts.base_sq_norm == pytest.approx(float(base[name].double().norm() ** 2), rel=1e-12)
        assert free.tensors[name].dots is None


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_stock_equals_independent_implementation(tmp_path, small_chunks, k, dtype):
    base_path, paths = _shared_family(tmp_path, k, dtype=dtype)
    soup, plan = model_stock_state_dict(_open(paths), open_checkpoint(base_path))
    want, ts = _reference(base_path, paths)
    assert set(soup) == set(want)
    for name, tensor in soup.items():
        assert tensor.dtype == want[name].dtype and tensor.shape == want[name].shape
        if tensor.is_floating_point():
            # fp32: accumulated in fp32 against fp64; bf16: at most one rounding step of the output apart
            tol = 2e-6 if dtype == torch.float32 else float(want[name].abs().max()) * 2 ** -7
            assert float((tensor.double() - want[name].double()).abs().max()) <= tol, name
        else:
            assert torch.equal(tensor, want[name]), name
    for name, t in ts.items():
        assert plan[name].t == pytest.approx(t, abs=1e-9)
        if math.prod(SHAPES[name]) >= 256:
            assert plan[name].cos == pytest.approx(0.4, abs=0.2)  # the shared direction shows
        assert sum(plan[name].ingredients) + plan[name].base == pytest.approx(1.0)


def test_singular_denominator_keeps_the_base(tmp_path):
    """K=3 task vectors at 120° in a plane: mean cosine −1/2, 1 + 2·cos = 0; K=2 opposite ones: cos = −1."""
    gen = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(6, 5, generator=gen), "v": torch.randn(9, generator=gen)}
    u = {n: torch.randn(x.shape, generator=gen, dtype=torch.float64) for n, x in base.items()}
    w = {n: torch.randn(x.shape, generator=gen, dtype=torch.float64) for n, x in base.items()}
    for n in base:  # u ⟂ w, equal norms
        u[n] /= u[n].norm()
        w[n] -= (w[n] * u[n]).sum() * u[n]
        w[n] /= w[n].norm()
    scale = 0.5  # a power of two: the fp32 checkpoints hold the directions nearly exactly
    three = [{n: (base[n].double() + scale * (math.cos(a) * u[n] + math.sin(a) * w[n])).float() for n in base}
             for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    two = [{n: (base[n].double() + scale * s * u[n]).float() for n in base} for s in (1.0, -1.0)]
    base_path = _save(tmp_path / "base", base)
    for label, family in (("three", three), ("two", two)):
        paths = [_save(tmp_path / f"{label}{i}", sd) for i, sd in enumerate(family)]
        soup, plan = model_stock_state_dict(_open(paths), open_checkpoint(base_path))
        for name in base:
            assert plan[name].singular and plan[name].t == 0.0, (label, name, plan[name])
            assert torch.equal(soup[name], base[name]), (label, name)


def test_zero_task_vectors_count_as_orthogonal(tmp_path):
    """Every ingredient equal to the base: t = 0, the base exactly. One equal to the base: its pairs count cos = 0."""
    base_path, paths = _shared_family(tmp_path, 3)
    base = load_file(os.path.join(base_path, "model.safetensors"))
    same = [_save(tmp_path / f"same{i}", base) for i in range(2)]
    soup, plan = model_stock_state_dict(_open(same), open_checkpoint(base_path))
    assert all(w.t == 0.0 and not w.singular for w in plan.values())
    assert all(torch.equal(soup[n], base[n]) for n in base)
    mixed = [paths[0], paths[1], same[0]]
    soup, plan = model_stock_state_dict(_open(mixed), open_checkpoint(base_path))
    want, ts = _reference(base_path, mixed)
    for name, t in ts.items():
        assert plan[name].t == pytest.approx(t, abs=1e-9)
        assert plan[name].cos == pytest.approx(
            collect_stats(_open(paths[:2]), open_checkpoint(base_path), progress=False).tensors[name].cosines()[0][1]
            / 3, abs=1e-9)  # pairs (0, 1), (0, base), (1, base): only the first is non-zero
        assert float((soup[name].double() - want[name].double()).abs().max()) <= 2e-6


def test_head_missing_from_base_is_the_uniform_mean(tmp_path):
    base_path, paths = _shared_family(tmp_path, 2, base_extra=lambda b: b.pop("head.weight"))
    soup, plan = model_stock_state_dict(_open(paths), open_checkpoint(base_path))
    fts = [load_file(os.path.join(p, "model.safetensors")) for p in paths]
    assert plan["head.weight"].t == 1.0 and plan["head.weight"].base == 0.0
    assert torch.equal(soup["head.weight"], (fts[0]["head.weight"] + fts[1]["head.weight"]) / 2)
    groups = summarise_ratios(plan)
    assert "head" not in groups and set(groups) == {"emb", "layer.*.dense"}
    assert groups["layer.*.dense"]["tensors"] == 4.0
    assert groups["layer.*.dense"]["min"] <= groups["layer.*.dense"]["mean"] <= groups["layer.*.dense"]["max"]


def test_model_stock_refuses_without_base_and_wrong_base_shapes(tmp_path):
    base_path, paths = _shared_family(tmp_path, 2, base_extra=lambda b: b.update({"emb.weight": torch.zeros(4, 4)}))
    with pytest.raises(SoupError, match="pretrained base"):
        stock_plan(collect_stats(_open(paths), progress=False))
    with pytest.raises(SoupError, match=r"emb\.weight.*\[4, 4\]|\[4, 4\].*emb\.weight"):
        collect_stats(_open(paths), open_checkpoint(base_path), progress=False)
    with pytest.raises(SoupError, match="two or more"):
        collect_stats(_open(paths[:1]), progress=False)


class _Spy:
    """Wraps a reader; records the largest range it was asked for and refuses whole-tensor reads."""

    def __init__(self, reader, log):
        self._r, self._log = reader, log
        self.tensors, self.ingredient = reader.tensors, reader.ingredient

    def view_range(self, name, start, count):
        return None  # force the copying path too

    def read_range(self, name, start, count, buffer=None):
        self._log.append(count)
        return self._r.read_range(name, start, count, buffer)

    def read(self, name, buffer=None):  # pragma: no cover - a failure path
        raise AssertionError(f"the statistics pass read all of {name} at once")


@pytest.mark.parametrize("k", [2, 6])
def test_stats_pass_reads_one_chunk_of_each_input_at_a_time(tmp_path, small_chunks, k):
    """Memory flat in the tensor sizes, one chunk per input: no read is larger than a chunk, whatever K."""
    base_path, paths = _shared_family(tmp_path, k)
    log: list[int] = []
    stats = collect_stats([_Spy(r, log) for r in _open(paths)], _Spy(open_checkpoint(base_path), log), progress=False)
    direct = collect_stats(_open(paths), open_checkpoint(base_path), progress=False)
    assert max(log) == 37 and len(log) == (k + 1) * sum(math.ceil(math.prod(s) / 37) for s in SHAPES.values())
    for name, ts in stats.tensors.items():
        assert sum(ts.dots, ()) == pytest.approx(sum(direct.tensors[name].dots, ()), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engine_model_stock_equals_in_memory(tmp_path, small_chunks, dtype):
    """The registered method's plan (signed per-tensor weights, the base as an input, integer tensors from the base)
    through the engine's threaded, chunked writer is the in-memory soup bit for bit."""
    from conftest import state_dict_of

    from hf_soups.merge.engine import merge_to_directory
    from hf_soups.merge.plan import build_plan
    from hf_soups.merge.stats import tensor_statistics
    from hf_soups.recipes import MethodContext
    from hf_soups.recipes.model_stock import model_stock

    base_path, paths = _shared_family(tmp_path, 3, dtype=dtype)
    # a tensor whose task vectors point apart: t < 0, so the base weight exceeds 1 and the others are negative
    fts = [load_file(os.path.join(p, "model.safetensors")) for p in paths]
    base = load_file(os.path.join(base_path, "model.safetensors"))
    away = [base["layer.1.dense.bias"] + s for s in (0.3, -0.2, -0.25)]
    for p, sd, v in zip(paths, fts, away):
        _save(p, {**sd, "layer.1.dense.bias": v.to(dtype)})
    want, weights = model_stock_state_dict(_open(paths), open_checkpoint(base_path))
    assert weights["layer.1.dense.bias"].t < 0
    readers = [*_open(paths), open_checkpoint(base_path)]
    plan = build_plan([r.tensors for r in readers[:3]], [1.0] * 3).with_base()
    ctx = MethodContext(names=("a", "b", "c"), plan=plan, readers=readers, base=readers[-1],
                        statistics=tensor_statistics(plan, readers, progress=False))
    result = model_stock(ctx)
    assert result.parameters["t"] == {n: w.t for n, w in weights.items()}
    os.makedirs(tmp_path / "out")
    files = merge_to_directory(result.plan, readers, str(tmp_path / "out"), max_shard_size="1KB", progress=False)
    assert len(files) > 2  # sharded
    got = state_dict_of(tmp_path / "out")
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def test_norm_floor_shrinks_barely_moved_tensors_like_mergekit(tmp_path):
    """Task-vector norms whose product is below NORM_FLOOR = 1e-6: the cosine is divided by 1e-6, not by the product
    (mergekit's clamp), so t is shrunk towards the base; above it, the plain cosine."""
    from hf_soups.recipes.model_stock import NORM_FLOOR

    gen = torch.Generator().manual_seed(3)
    base = {"tiny": torch.randn(64, generator=gen), "big": torch.randn(64, generator=gen)}
    shared = torch.randn(64, generator=gen)
    fts = []
    for i in range(2):
        noise = torch.randn(64, generator=gen)
        step = (0.6 * shared / shared.norm() + 0.8 * noise / noise.norm())
        fts.append({"tiny": base["tiny"] + 1e-4 * step, "big": base["big"] + 0.5 * step})
    base_path = _save(tmp_path / "base", base)
    paths = [_save(tmp_path / f"ft{i}", sd) for i, sd in enumerate(fts)]
    stats = collect_stats(_open(paths), open_checkpoint(base_path), progress=False)
    _, plan = model_stock_state_dict(_open(paths), open_checkpoint(base_path), stats=stats)
    _, ts = _reference(base_path, paths)
    for name in base:
        d = stats.tensors[name].dots
        assert plan[name].t == pytest.approx(ts[name], abs=1e-9)
        true_cos = d[0][1] / math.sqrt(d[0][0] * d[1][1])
        assert (math.sqrt(d[0][0] * d[1][1]) < NORM_FLOOR) is (name == "tiny")
        want = d[0][1] / NORM_FLOOR if name == "tiny" else true_cos
        assert plan[name].cos == pytest.approx(want, rel=1e-9)
    assert plan["tiny"].t < 0.01 < plan["big"].t


def test_plan_statistics_align_classifier_rows(tmp_path, small_chunks):
    """An ingredient whose classifier rows are stored in another label order: the plan's statistics read them in
    the first ingredient's order, so the dot products equal those of the aligned checkpoint."""
    from hf_soups.merge.plan import build_plan
    from hf_soups.merge.stats import tensor_statistics

    base_path, paths = _shared_family(tmp_path, 2)
    sd = load_file(os.path.join(paths[1], "model.safetensors"))
    perm = [2, 0, 1]  # stored row r holds label perm.index(r): reading rows `perm` restores the first's order
    shuffled = dict(sd)
    shuffled["head.weight"] = torch.empty_like(sd["head.weight"])
    shuffled["head.weight"][perm] = sd["head.weight"]
    moved = _save(tmp_path / "shuffled", shuffled)
    readers = _open([paths[0], moved])
    plan = build_plan([r.tensors for r in readers], [1, 1], label_permutations=[None, perm], num_labels=3)
    assert [tp.name for tp in plan.tensors if tp.permute_rows] == ["head.weight"]
    aligned = tensor_statistics(plan, readers, progress=False)
    want = collect_stats(_open(paths), progress=False)
    unaligned = collect_stats(readers, progress=False)
    for name, ts in want.tensors.items():
        assert sum(aligned.tensors[name].sq_distances, ()) == pytest.approx(sum(ts.sq_distances, ()), rel=1e-12)
    assert unaligned.tensors["head.weight"].sq_distances[0][1] != pytest.approx(
        want.tensors["head.weight"].sq_distances[0][1], rel=1e-3)


def test_soup_from_hub_model_stock_equals_reference_and_replays(tmp_path, family):
    """method="model_stock" end to end on tiny BERTs (a sharded fp32, a bf16 and an fp32 fine-tune): the soup
    equals the fp64 reference, the recipe records t per tensor and its summary per group, and replays bit for bit."""
    from conftest import state_dict_of

    from hf_soups import replay_recipe, soup_from_hub
    from hf_soups.recipes.model_stock import PAPER

    refs = [family["a"], family["c"], family["d"]]
    soup = soup_from_hub(refs, method="model_stock", base=family["base"], output_dir=tmp_path / "soup")
    got = state_dict_of(tmp_path / "soup")
    base = state_dict_of(family["base"])
    fts = [state_dict_of(p) for p in refs]
    for name, tensor in got.items():
        if not tensor.is_floating_point():
            continue
        b = base[name].double().flatten()
        taus = [f[name].double().flatten() - b for f in fts]
        cos = [float(torch.clamp(x @ y / torch.clamp(x.norm() * y.norm(), min=1e-6), -1, 1))
               for x, y in itertools.combinations(taus, 2)]
        c = sum(cos) / 3
        t = 0.0 if abs(1 + 2 * c) < 1e-6 else 3 * c / (1 + 2 * c)
        want = t * sum(f[name].double() for f in fts) / 3 + (1 - t) * base[name].double()
        assert float((tensor.double() - want).abs().max()) <= 2e-6 * max(1.0, float(want.abs().max())), name
        assert soup.recipe.parameters["t"][name] == pytest.approx(t, abs=1e-9)
    groups = soup.recipe.parameters["t_by_group"]
    assert "bert.encoder.layer.*.attention.self.query" in groups
    from hf_soups.recipes import METHODS

    assert METHODS["model_stock"].paper == PAPER
    again = replay_recipe(soup.recipe, tmp_path / "again", allow_local=True)
    assert again is not None
    replayed = state_dict_of(tmp_path / "again")
    assert all(torch.equal(replayed[n], got[n]) for n in got)


def test_cli_soup_method_model_stock(tmp_path, family):
    """`hf-soups soup --method model_stock --base BASE` writes the soup soup_from_hub writes; without a base the
    method refuses in the CLI's words, with a non-1 exit code."""
    from conftest import state_dict_of

    from hf_soups import soup_from_hub
    from hf_soups.cli.main import main

    refs = [family["a"], family["d"]]
    assert main(["soup", *refs, "--method", "model_stock", "--base", family["base"],
                 "--output", str(tmp_path / "cli")]) == 0
    soup_from_hub(refs, method="model_stock", base=family["base"], output_dir=tmp_path / "api")
    cli, api = state_dict_of(tmp_path / "cli"), state_dict_of(tmp_path / "api")
    assert set(cli) == set(api) and all(torch.equal(cli[n], api[n]) for n in api)
    code = main(["soup", *refs, "--method", "model_stock", "--output", str(tmp_path / "nobase")])
    assert code not in (0, 1) and not os.path.exists(tmp_path / "nobase")
