"""Hub discovery through real HTTP on a loopback Hub: the model tree, collections, paging, bounded concurrency."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import state_dict_of
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from hf_soups import (
    InvalidArgumentError,
    CandidateSet,
    IngredientNotFoundError,
    MergeOptions,
    SoupError,
    find_ingredients,
    soup_from_hub,
)
from hf_soups.hub.discovery import read_refs
from hf_soups.testing import make_tiny_bert, perturb_checkpoint
from hf_soups.testing.hub import LoopbackHub
from hf_soups import HubAccess

TOKEN = "hf_disco_write_token_0123456789"
BASE = "disco/tiny-base"
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
GOOD = ["disco/sweep-lr1", "disco/sweep-lr2", "disco/sweep-lr3", "disco/sweep-ls1", "disco/sweep-ls2"]
ODD = {"disco/sweep-relabeled": "id2label", "disco/sweep-mlm": "architectures", "disco/sweep-bin": "no safetensors"}
UNRELATED = ["disco/other-model", "disco/other-base-ft"]
PAGED_BASE = "disco/paged-base"


def _card(path, base):
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write(f"---\nbase_model: {base}\nlibrary_name: transformers\n---\n\n# A fine-tune\n" if base
                else "# no card\n")
    return path


@pytest.fixture(scope="module")
def disco_hub():
    server = LoopbackHub(tokens={TOKEN: "disco"}, page_size=100).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dapi(disco_hub):
    return HfApi(endpoint=disco_hub.url, token=TOKEN)


def _publish(api, path, repo_id):
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(folder_path=str(path), repo_id=repo_id).oid


@pytest.fixture(scope="module")
def sweep(dapi, tmp_path_factory):
    """A base, 5 fine-tunes declaring it, 3 odd ones declaring it, 2 unrelated repos: published in shuffled order."""
    root = tmp_path_factory.mktemp("sweep")
    base = make_tiny_bert(root / "base", seed=0, hidden_size=64, id2label=LABELS)  # ~300 KB of weights
    dirs = {}
    for k, repo in enumerate(GOOD):
        dirs[repo] = _card(perturb_checkpoint(base, root / repo.split("/")[1], seed=k + 1), BASE)
    relabeled = shutil.copytree(dirs[GOOD[0]], root / "relabeled")
    config = json.loads((relabeled / "config.json").read_text())
    config["id2label"] = {"0": "positive", "1": "neutral", "2": "negative"}
    config["label2id"] = {"positive": 0, "neutral": 1, "negative": 2}
    (relabeled / "config.json").write_text(json.dumps(config))
    dirs["disco/sweep-relabeled"] = relabeled
    dirs["disco/sweep-mlm"] = _card(make_tiny_bert(root / "mlm", seed=0, hidden_size=64, head="masked"), BASE)
    pickled = shutil.copytree(dirs[GOOD[1]], root / "bin")
    torch.save(state_dict_of(pickled), pickled / "pytorch_model.bin")
    os.remove(pickled / "model.safetensors")
    dirs["disco/sweep-bin"] = pickled
    dirs["disco/other-model"] = _card(make_tiny_bert(root / "other", seed=7, hidden_size=64, id2label=LABELS), None)
    dirs["disco/other-base-ft"] = _card(perturb_checkpoint(base, root / "other-ft", seed=9), "disco/another-base")
    dirs[BASE] = base
    shas = {}
    for repo in ["disco/sweep-ls2", "disco/other-model", "disco/sweep-mlm", "disco/sweep-lr3", BASE, "disco/sweep-bin",
                 "disco/sweep-lr1", "disco/other-base-ft", "disco/sweep-relabeled", "disco/sweep-ls1",
                 "disco/sweep-lr2"]:
        shas[repo] = _publish(dapi, dirs[repo], repo)
    weights = {repo: os.path.getsize(os.path.join(d, "model.safetensors")) for repo, d in dirs.items()
               if os.path.exists(os.path.join(d, "model.safetensors"))}
    assert min(weights.values()) > 200_000  # bigger than huggingface_hub's 100 kB header read
    return {"shas": shas, "weights": weights, "dirs": dirs}


def _assert_headers_only(hub, weights, repos):
    """The server's counters: every weight request was a range read, and each repo sent less than its weights."""
    served = dict(hub.bytes_served)
    for repo in repos:
        if repo in weights:
            assert served.get(repo, 0) < weights[repo], (repo, served.get(repo), weights[repo])
    weight_requests = [(m, p, s) for m, p, s in hub.requests if "/resolve/" in p and p.split("?")[0].endswith(
        (".safetensors", ".bin"))]
    assert weight_requests and all(s == 206 for _, _, s in weight_requests), weight_requests
    assert not [p for _, p, _ in weight_requests if p.split("?")[0].endswith(".bin")]


def _assert_the_sweep(found, shas):
    assert isinstance(found, CandidateSet)
    assert [c.repo_id for c in found.ingredients] == GOOD  # repo id order, not publication order
    assert found.refs == tuple(f"{r}@{shas[r]}" for r in GOOD)
    assert all(c.verdict == "compatible" and c.reason is None for c in found.ingredients)
    rejected = {c.repo_id: c for c in found.rejected}
    for repo, word in ODD.items():
        assert word in rejected[repo].reason, (repo, rejected[repo].reason)
        assert rejected[repo].sha == shas[repo] and rejected[repo].verdict == "rejected"
    assert "different order" in rejected["disco/sweep-relabeled"].reason
    assert "BertForMaskedLM" in rejected["disco/sweep-mlm"].reason
    assert "pytorch_model.bin" in rejected["disco/sweep-bin"].reason
    return rejected


def test_model_tree_finds_the_five_and_rejects_three_headers_only(disco_hub, sweep, tmp_path):
    disco_hub.reset_counters()
    found = find_ingredients(BASE, endpoint=disco_hub.url, cache_dir=str(tmp_path / "c1"), progress=False)
    rejected = _assert_the_sweep(found, sweep["shas"])
    assert set(rejected) == set(ODD)  # the unrelated repos are not even candidates
    _assert_headers_only(disco_hub, sweep["weights"], GOOD + list(ODD))
    assert not {r for r in disco_hub.bytes_served if r in UNRELATED or r == BASE}
    assert found.query.base_model == BASE and found.query.date.endswith("Z")
    table = found.to_table()
    assert "Found 5 compatible of 8 candidates" in table and sweep["shas"][GOOD[0]][:12] in table
    # stable across runs, whatever the concurrency and a fresh cache
    again = find_ingredients(BASE, endpoint=disco_hub.url, cache_dir=str(tmp_path / "c2"), progress=False,
                             max_workers=1)
    assert again.ingredients == found.ingredients and again.rejected == found.rejected


def test_collection_gives_the_same_verdict_and_checks_declarations(dapi, disco_hub, sweep, tmp_path):
    coll = dapi.create_collection("LR sweep", description="fine-tunes of tiny-base")
    for repo in ["disco/sweep-mlm", *GOOD[::-1], "disco/sweep-bin", BASE, "disco/sweep-relabeled",
                 "disco/other-base-ft"]:
        dapi.add_collection_item(coll.slug, repo, "model")
    disco_hub.reset_counters()
    found = find_ingredients(BASE, collection=coll.slug, endpoint=disco_hub.url, cache_dir=str(tmp_path / "c"),
                             progress=False)
    rejected = _assert_the_sweep(found, sweep["shas"])
    assert set(rejected) == set(ODD) | {BASE, "disco/other-base-ft"}
    assert "does not declare base_model" in rejected[BASE].reason and "base model itself" in rejected[BASE].reason
    assert "disco/another-base" in rejected["disco/other-base-ft"].reason
    _assert_headers_only(disco_hub, sweep["weights"], list(rejected) + GOOD)
    assert found.query.collection == coll.slug
    # without a base, the majority decides: the base itself (no card) fits, the other base's fine-tune does not
    majority = find_ingredients(collection=coll.slug, endpoint=disco_hub.url, progress=False)
    assert [c.repo_id for c in majority.ingredients] == sorted(GOOD + [BASE], key=str.casefold)
    assert "base_model" in {c.repo_id: c for c in majority.rejected}["disco/other-base-ft"].reason
    with pytest.raises(IngredientNotFoundError, match="collection"):
        find_ingredients(collection="disco/no-such-collection-0123", endpoint=disco_hub.url, progress=False)


def test_soup_from_a_candidate_set_records_the_query(disco_hub, sweep, tmp_path):
    found = find_ingredients(BASE, search="sweep-lr", endpoint=disco_hub.url, progress=False)
    assert [c.repo_id for c in found.ingredients] == GOOD[:3]
    soup = soup_from_hub(found, output_dir=tmp_path / "soup", access=HubAccess(endpoint=disco_hub.url),
                         merge_options=MergeOptions(progress=False))
    assert [i.revision for i in soup.ingredients] == [sweep["shas"][r] for r in GOOD[:3]]
    assert soup.recipe.ingredients == found.refs
    sds = [state_dict_of(sweep["dirs"][r]) for r in GOOD[:3]]
    out = state_dict_of(soup.output_dir)
    for k in out:
        assert (out[k] - torch.stack([sd[k] for sd in sds]).mean(0)).abs().max() <= 1e-6
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    assert "## How the ingredients were found" in card.text
    assert found.query.date in card.text and f"hf-soups find --base {BASE} --search sweep-lr" in card.text
    assert all(sweep["shas"][r] in card.text for r in GOOD[:3])


def test_relations_gates_and_arguments(dapi, disco_hub, sweep, tmp_path):
    other = "disco/gated-base"
    for k in (0, 1):
        _publish(dapi, _card(shutil.copytree(sweep["dirs"][GOOD[k]], tmp_path / f"ok{k}"), other), f"disco/g-ok{k}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": other, "r": 4}))
    _publish(dapi, _card(adapter, other), "disco/g-lora")
    _publish(dapi, _card(shutil.copytree(sweep["dirs"][GOOD[2]], tmp_path / "gated"), other), "disco/g-gated")
    dapi.update_repo_settings("disco/g-gated", gated="manual")
    found = find_ingredients(other, endpoint=disco_hub.url, progress=False, token=False)
    rejected = {c.repo_id: c for c in found.rejected}
    assert [c.repo_id for c in found.ingredients] == ["disco/g-ok0", "disco/g-ok1"]
    assert set(rejected) == {"disco/g-lora", "disco/g-gated"}
    assert "PEFT adapter" in rejected["disco/g-lora"].reason  # from the Hub's tags, before any request
    assert "gated" in rejected["disco/g-gated"].reason and "token" in rejected["disco/g-gated"].fix
    owner = find_ingredients(other, endpoint=disco_hub.url, progress=False, token=TOKEN)
    assert [c.repo_id for c in owner.ingredients] == ["disco/g-gated", "disco/g-ok0", "disco/g-ok1"]
    lenient = find_ingredients(BASE, align_labels=True, endpoint=disco_hub.url, progress=False)
    assert "disco/sweep-relabeled" in [c.repo_id for c in lenient.ingredients]
    limited = find_ingredients(BASE, task="fill-mask", endpoint=disco_hub.url, progress=False)
    assert [c.repo_id for c in limited.ingredients + limited.rejected] == ["disco/sweep-mlm"]
    with pytest.raises(SoupError, match="nothing to look for"):
        find_ingredients(endpoint=disco_hub.url)


@pytest.fixture(scope="module")
def paged(dapi, sweep):
    """250 small repos declaring one base: the same config and weights blob, each with its own card and commit."""
    src = sweep["dirs"][GOOD[0]]
    blobs = {name: open(os.path.join(src, name), "rb").read() for name in ("config.json", "model.safetensors")}

    def seed(k):
        repo = f"disco/paged-{k:03d}"
        dapi.create_repo(repo, exist_ok=True)
        card = f"---\nbase_model: {PAGED_BASE}\n---\n# paged fine-tune {k}\n".encode()
        ops = [CommitOperationAdd(name, data) for name, data in blobs.items()]
        dapi.create_commit(repo, ops + [CommitOperationAdd("README.md", card)], commit_message="add")
        return repo

    with ThreadPoolExecutor(4) as pool:
        repos = list(pool.map(seed, range(250)))
    return {"repos": repos, "weights": len(blobs["model.safetensors"])}


def test_250_repos_page_and_preflight_with_bounded_concurrency(disco_hub, paged, tmp_path, monkeypatch):
    bar = {}

    class Bar:  # records what huggingface_hub's tqdm is fed (the tests run with progress bars disabled)
        def __init__(self, total, **kwargs):
            bar.update(total=total, n=0, **kwargs)

        def update(self, k):
            bar["n"] += k

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr("hf_soups.hub.discovery.tqdm", Bar)
    disco_hub.reset_counters()
    disco_hub.rate_limit_listings = 1  # the first page is refused once with HTTP 429: huggingface_hub retries
    found = find_ingredients(PAGED_BASE, endpoint=disco_hub.url, cache_dir=str(tmp_path / "c"), progress=True,
                             max_workers=4)
    assert [c.repo_id for c in found.ingredients] == paged["repos"] and not found.rejected
    assert bar["total"] == bar["n"] == 250 and bar["unit"] == "repo"
    pages = [p for m, p, s in disco_hub.requests if p.startswith("/api/models?") and s == 200]
    assert len(pages) == 3 and all("cursor=" in p for p in pages[1:])  # 100 per page
    assert [s for m, p, s in disco_hub.requests if p.startswith("/api/models?")].count(429) == 1
    assert 2 <= disco_hub.max_in_flight <= 4
    _assert_headers_only(disco_hub, dict.fromkeys(paged["repos"], paged["weights"]), paged["repos"])
    limited = find_ingredients(PAGED_BASE, limit=30, endpoint=disco_hub.url, progress=False)
    assert len(limited) == 30


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "hf_soups", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_cli_find_writes_refs_that_soup_and_check_read(disco_hub, sweep, tmp_path):
    env = {"HF_ENDPOINT": disco_hub.url}
    refs = tmp_path / "refs.txt"
    proc = _cli("find", "--base", BASE, "--author", "disco", "--write-refs", refs, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Found 5 compatible of 8 candidates" in proc.stdout and "disco/sweep-bin" in proc.stdout
    assert read_refs(refs) == [f"{r}@{sweep['shas'][r]}" for r in GOOD]
    assert refs.read_text().startswith(f"# hf-soups find --base {BASE} --author disco\n")
    as_json = json.loads(_cli("find", "--base", BASE, "--json", env=env).stdout)
    assert [c["repo_id"] for c in as_json["ingredients"]] == GOOD and len(as_json["rejected"]) == 3
    assert _cli("find", "--base", BASE, "--search", "sweep-mlm", env=env).returncode == 1  # fewer than two
    assert _cli("find", env=env).returncode == 2
    with open(refs, "a") as f:
        f.write("\n# a comment line\n")
    proc = _cli("check", f"@{refs}", env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _cli("soup", f"@{refs}", "--output", tmp_path / "soup", env=env)
    assert proc.returncode == 0, proc.stderr
    sds = [state_dict_of(sweep["dirs"][r]) for r in GOOD]
    out = state_dict_of(tmp_path / "soup")
    assert all((out[k] - torch.stack([sd[k] for sd in sds]).mean(0)).abs().max() <= 1e-6 for k in out)
    missing = _cli("soup", f"@{tmp_path / 'nope.txt'}", "--output", tmp_path / "s2", env=env)
    assert missing.returncode == 3 and "refs file" in missing.stderr


def test_soup_from_a_collection_soups_the_compatible_models(dapi, disco_hub, sweep, tmp_path, caplog):
    coll = dapi.create_collection("three lrs", description="three fine-tunes and a masked-LM head")
    for repo in [*GOOD[:3], "disco/sweep-mlm"]:
        dapi.add_collection_item(coll.slug, repo, "model")
    with caplog.at_level(logging.WARNING, logger="hf_soups"):
        soup = soup_from_hub(collection=coll.slug, output_dir=tmp_path / "soup",
                             access=HubAccess(endpoint=disco_hub.url),
                             merge_options=MergeOptions(progress=False))
    assert [i.revision for i in soup.ingredients] == [sweep["shas"][r] for r in GOOD[:3]]
    assert any("disco/sweep-mlm" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    sds = [state_dict_of(sweep["dirs"][r]) for r in GOOD[:3]]
    out = state_dict_of(soup.output_dir)
    for k in out:
        assert (out[k] - torch.stack([sd[k] for sd in sds]).mean(0)).abs().max() <= 1e-6
    card = ModelCard.load(os.path.join(soup.output_dir, "README.md"))
    assert "## How the ingredients were found" in card.text and coll.slug in card.text
    with pytest.raises(InvalidArgumentError, match="both"):
        soup_from_hub(GOOD[:2], collection=coll.slug, access=HubAccess(endpoint=disco_hub.url))
    with pytest.raises(InvalidArgumentError, match="no ingredients"):
        soup_from_hub(access=HubAccess(endpoint=disco_hub.url))
