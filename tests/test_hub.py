"""The Hub path through real HTTP on loopback: resolve, preflight, download, stream, push, card, errors."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import BOB_TOKEN, WRITE_TOKEN, publish, state_dict_of
from huggingface_hub import ModelCard

from hf_soups import (
    AuthenticationError,
    IncompatibleIngredientsError,
    IngredientNotFoundError,
    NoSafetensorsError,
    PushError,
    RevisionNotFoundError,
    soup_from_hub,
)
from hf_soups.testing import make_tiny_bert
from hf_soups import HubAccess, MergeOptions


@pytest.fixture(scope="module")
def repos(api, family):
    shas = {
        "ft-a": publish(api, family["a"], "alice/ft-a", tag="v1"),
        "ft-c": publish(api, family["c"], "alice/ft-c"),
        "ft-d": publish(api, family["d"], "alice/ft-d"),
    }
    return shas


def test_soup_from_hub_pins_revisions_and_matches_local_soup(hub, repos, family, tmp_path):
    soup = soup_from_hub(["alice/ft-a@v1", "alice/ft-c", "alice/ft-d"], output_dir=tmp_path / "hub",
                         merge_options=MergeOptions(progress=False))
    assert [i.revision for i in soup.ingredients] == [repos["ft-a"], repos["ft-c"], repos["ft-d"]]
    assert [i.repo_id for i in soup.ingredients] == ["alice/ft-a", "alice/ft-c", "alice/ft-d"]
    assert soup.ingredients[0].ref == "alice/ft-a@v1"
    local = soup_from_hub([family["a"], family["c"], family["d"]], output_dir=tmp_path / "local",
                          merge_options=MergeOptions(progress=False))
    hub_sd, local_sd = state_dict_of(soup.output_dir), state_dict_of(local.output_dir)
    assert hub_sd.keys() == local_sd.keys()
    assert all(torch.equal(hub_sd[k], local_sd[k]) for k in hub_sd)
    sds = [state_dict_of(family[x]) for x in "acd"]
    for k in hub_sd:
        assert (hub_sd[k] - torch.stack([sd[k] for sd in sds]).mean(0)).abs().max() <= 1e-6
    assert f"alice/ft-a@{repos['ft-a']}" in soup.recipe.ingredients


def test_revision_keyword_and_new_commits_are_pinned(api, hub, family, tmp_path):
    first = publish(api, family["a"], "alice/moving")
    second = publish(api, family["d"], "alice/moving")  # main moves on
    assert first != second
    soup = soup_from_hub(["alice/moving", "alice/ft-c"], revision=[first, None], output_dir=tmp_path / "s",
                         merge_options=MergeOptions(progress=False))
    assert soup.ingredients[0].revision == first
    api.create_branch("alice/moving", branch="stable", revision=first)
    api.create_branch("alice/ft-c", branch="stable")
    both = soup_from_hub(["alice/moving", "alice/ft-c"], revision="stable", output_dir=tmp_path / "b",
                         merge_options=MergeOptions(progress=False))
    assert both.ingredients[0].revision == first
    pinned = soup_from_hub([f"alice/moving@{first}", "alice/ft-c"], output_dir=tmp_path / "p",
                           merge_options=MergeOptions(progress=False))
    assert pinned.ingredients[0].revision == first
    assert soup_from_hub(["alice/moving", "alice/ft-c"], output_dir=tmp_path / "m",
                         merge_options=MergeOptions(progress=False)).ingredients[0].revision == second


def test_preflight_refuses_incompatible_set_after_headers_only(api, hub, tmp_path):
    base = make_tiny_bert(tmp_path / "big", seed=0, hidden_size=256, num_hidden_layers=4)  # ~13 MB of weights
    other = make_tiny_bert(tmp_path / "big2", seed=0, hidden_size=256, num_hidden_layers=4, num_labels=2)
    publish(api, base, "alice/big-3labels")
    publish(api, other, "alice/big-2labels")
    weights = os.path.getsize(os.path.join(base, "model.safetensors"))
    assert weights > 5_000_000
    hub.reset_counters()
    with pytest.raises(IncompatibleIngredientsError) as err:
        soup_from_hub(["alice/big-3labels", "alice/big-2labels"], output_dir=tmp_path / "soup",
                      merge_options=MergeOptions(progress=False))
    assert "num_labels" in str(err.value)
    served = dict(hub.bytes_served)
    assert set(served) == {"alice/big-3labels", "alice/big-2labels"}
    for repo, n in served.items():
        assert n <= 1_000_000, (repo, n)  # headers + config, never the weights
    assert not (tmp_path / "soup").exists()


def test_download_only_what_is_needed(api, hub, family, tmp_path):
    import shutil

    repo_dir = tmp_path / "cluttered"
    shutil.copytree(family["d"], repo_dir)
    (repo_dir / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    (repo_dir / "optimizer.pt").write_bytes(b"\0" * 4096)
    (repo_dir / "flax_model.msgpack").write_bytes(b"\0" * 4096)
    (repo_dir / "training_args.bin").write_bytes(b"\0" * 128)
    publish(api, repo_dir, "alice/cluttered")
    hub.reset_counters()
    soup = soup_from_hub(["alice/cluttered", "alice/ft-c"], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for m, p, s in hub.requests if m == "GET" and "/resolve/" in p
               and p.startswith("/alice/cluttered/")}
    assert not fetched & {"pytorch_model.bin", "optimizer.pt", "flax_model.msgpack", "training_args.bin"}
    assert "model.safetensors" in fetched and "config.json" in fetched
    assert set(os.listdir(soup.ingredients[0].local_dir)) <= {
        "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}


def test_stream_equals_download_with_bounded_disk(hub, repos, tmp_path):
    import glob

    downloaded = soup_from_hub(["alice/ft-a", "alice/ft-c", "alice/ft-d"], output_dir=tmp_path / "dl",
                               merge_options=MergeOptions(progress=False))
    cache = tmp_path / "fresh-cache"
    streamed = soup_from_hub(["alice/ft-a", "alice/ft-c", "alice/ft-d"], output_dir=tmp_path / "st",
                             merge_options=MergeOptions(stream=True, progress=False),
                             access=HubAccess(cache_dir=str(cache)))
    a, b = state_dict_of(downloaded.output_dir), state_dict_of(streamed.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # nothing but small files landed in the cache: no ingredient weights on disk
    cached = glob.glob(str(cache / "**" / "*"), recursive=True)
    assert not [p for p in cached if p.endswith(".safetensors")]
    weights = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "dl" / "*.safetensors")))
    cache_bytes = sum(os.path.getsize(p) for p in cached if os.path.isfile(p))
    assert cache_bytes < weights / 2


def test_push_then_load_from_the_hub(hub, repos, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    soup = soup_from_hub(["alice/ft-a", "alice/ft-d"], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    info = soup.push_to_hub("alice/soup", token=WRITE_TOKEN)
    assert info.oid and "alice/soup" in info.commit_url
    remote = AutoModelForSequenceClassification.from_pretrained("alice/soup").eval()
    tok = AutoTokenizer.from_pretrained("alice/soup")
    batch = tok(["good movie", "awful plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(remote(**batch).logits, soup.model(**batch).logits, atol=0, rtol=0)
    pipe = pipeline("text-classification", model="alice/soup")
    local_pipe = pipeline("text-classification", model=soup.output_dir)
    assert pipe("good movie") == local_pipe("good movie")
    card = ModelCard.load("alice/soup")
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert set(card.data.tags) >= {"merge", "model-soup", "hf-soups"}
    assert card.data.base_model == ["alice/ft-a", "alice/ft-d"]
    for ing in soup.ingredients:
        assert ing.revision in card.text
    assert WRITE_TOKEN not in card.text and WRITE_TOKEN not in repr(soup)
    reparsed = ModelCard(str(card))
    assert reparsed.data.to_dict() == card.data.to_dict()


def test_failed_push_keeps_local_soup_and_retry_works(hub, repos, tmp_path):
    soup = soup_from_hub(["alice/ft-a", "alice/ft-d"], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    import hashlib

    def snapshot():  # every file but the card, which a push refreshes with the target repo id
        return {n: hashlib.sha256(open(os.path.join(soup.output_dir, n), "rb").read()).hexdigest()
                for n in os.listdir(soup.output_dir) if n != "README.md"}

    before = snapshot()
    hub.fail_commits = 10  # more than the client's own retries
    with pytest.raises(PushError) as err:
        soup.push_to_hub("alice/flaky-soup", token=WRITE_TOKEN)
    hub.fail_commits = 0
    assert "alice/flaky-soup" in str(err.value) and "retry" in str(err.value)
    assert snapshot() == before and "model.safetensors" in before
    info = soup.push_to_hub("alice/flaky-soup", token=WRITE_TOKEN)
    from huggingface_hub import HfApi

    files = HfApi(endpoint=hub.url).list_repo_files("alice/flaky-soup", token=WRITE_TOKEN, revision=info.oid)
    assert {"model.safetensors", "config.json", "README.md"} <= set(files)


def test_missing_repo_and_revision(hub, repos, tmp_path):
    with pytest.raises(IngredientNotFoundError) as err:
        soup_from_hub(["alice/does-not-exist", "alice/ft-a"], merge_options=MergeOptions(progress=False),
                      access=HubAccess(token=WRITE_TOKEN))
    assert "alice/does-not-exist" in str(err.value)
    with pytest.raises(RevisionNotFoundError) as err:
        soup_from_hub(["alice/ft-a@no-such-branch", "alice/ft-d"], merge_options=MergeOptions(progress=False))
    assert "no-such-branch" in str(err.value) and "alice/ft-a@no-such-branch" in str(err.value)


def test_private_repo_needs_token_and_token_never_leaks(api, hub, family, tmp_path, caplog):
    publish(api, family["a"], "alice/private-ft", private=True)
    with pytest.raises(AuthenticationError) as err:
        soup_from_hub(["alice/private-ft", "alice/ft-d"], merge_options=MergeOptions(progress=False))
    assert "token=" in str(err.value) and "private" in str(err.value)
    with pytest.raises(AuthenticationError) as err:
        soup_from_hub(["alice/private-ft", "alice/ft-d"], merge_options=MergeOptions(progress=False),
                      access=HubAccess(token="hf_wrong_secret_token"))
    assert "hf_wrong_secret_token" not in str(err.value)
    soup = soup_from_hub(["alice/private-ft", "alice/ft-d"], merge_options=MergeOptions(progress=False),
                         access=HubAccess(token=WRITE_TOKEN), output_dir=tmp_path / "s")
    for text in (repr(soup), str(soup.card), soup.recipe.to_yaml(), caplog.text, repr(soup.ingredients)):
        assert WRITE_TOKEN not in text
    with pytest.raises(AuthenticationError):  # bob cannot write to alice's namespace
        soup.push_to_hub("alice/not-bobs", token=BOB_TOKEN)


def test_repo_without_safetensors(api, hub, tmp_path):
    d = tmp_path / "binonly"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    publish(api, d, "alice/bin-only")
    with pytest.raises(NoSafetensorsError) as err:
        soup_from_hub(["alice/bin-only", "alice/ft-a"], merge_options=MergeOptions(progress=False))
    assert "alice/bin-only" in str(err.value) and "allow_pickle=True" in str(err.value)


def test_offline_from_prepopulated_cache(hub, repos, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    online = soup_from_hub(["alice/ft-a@v1", "alice/ft-d"], output_dir=tmp_path / "on",
                           merge_options=MergeOptions(progress=False), access=HubAccess(cache_dir=cache))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.reset_counters()
    offline = soup_from_hub(["alice/ft-a@v1", "alice/ft-d"], output_dir=tmp_path / "off",
                            merge_options=MergeOptions(progress=False), access=HubAccess(cache_dir=cache))
    assert not hub.requests  # nothing went over the network
    assert [i.revision for i in offline.ingredients] == [i.revision for i in online.ingredients]
    a, b = state_dict_of(online.output_dir), state_dict_of(offline.output_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(IngredientNotFoundError, match="HF_HUB_OFFLINE"):
        soup_from_hub(["alice/ft-c", "alice/ft-d"], merge_options=MergeOptions(progress=False),
                      access=HubAccess(cache_dir=cache))


def test_evaluating_a_streamed_soup_says_what_to_do(hub, repos, tmp_path):
    from datasets import Dataset

    from hf_soups import EvaluationError

    soup = soup_from_hub(["alice/ft-a", "alice/ft-d"], output_dir=tmp_path / "s",
                         merge_options=MergeOptions(stream=True, progress=False),
                         access=HubAccess(cache_dir=str(tmp_path / "c")))
    ds = Dataset.from_dict({"text": ["good movie"], "label": [0]})
    with pytest.raises(EvaluationError, match="stream=False"):
        soup.evaluate({"val": ds})
