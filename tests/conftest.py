"""Shared fixtures: a loopback Hub on real HTTP, and tiny real checkpoints made with transformers.

The environment is set before huggingface_hub is imported, because it reads HF_ENDPOINT at import time.
"""

from __future__ import annotations

import os
import socket
import tempfile

_port_sock = socket.socket()
_port_sock.bind(("127.0.0.1", 0))
HUB_PORT = _port_sock.getsockname()[1]
_port_sock.close()
_HF_HOME = tempfile.mkdtemp(prefix="hf-soups-tests-home-")
os.environ.update({
    "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
    "HF_HUB_DISABLE_XET": "1",
    "HF_HOME": _HF_HOME,
    # The architecture cache's per-user HMAC key lives under XDG_CONFIG_HOME: keep the suite's own out of ~/.config.
    "XDG_CONFIG_HOME": os.path.join(_HF_HOME, "xdg-config"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
})
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from hf_soups.testing import make_tiny_bert, perturb_checkpoint  # noqa: E402
from hf_soups.testing.hub import LoopbackHub  # noqa: E402

WRITE_TOKEN = "hf_alice_write_token_0123456789"
BOB_TOKEN = "hf_bob_token_9876543210"


@pytest.fixture(scope="session")
def hub():
    server = LoopbackHub(tokens={WRITE_TOKEN: "alice", BOB_TOKEN: "bob"}, port=HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(hub):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url, token=WRITE_TOKEN)


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """A base tiny BERT classifier and three 'fine-tunes' of it, saved with different shardings and dtypes."""
    root = tmp_path_factory.mktemp("family")
    base = make_tiny_bert(root / "base", seed=0)
    return {
        "base": base,
        "a": perturb_checkpoint(base, root / "a", seed=1, max_shard_size="20KB"),  # sharded, fp32
        "b": perturb_checkpoint(base, root / "b", seed=2, dtype=torch.bfloat16),  # single file, bf16
        "c": perturb_checkpoint(base, root / "c", seed=3, max_shard_size="50KB"),  # sharded differently
        "d": perturb_checkpoint(base, root / "d", seed=4),  # single file, fp32
    }


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Exercise the chunked path of the engine on tiny tensors."""
    monkeypatch.setenv("HF_SOUPS_CHUNK_ELEMENTS", "333")


def state_dict_of(path):
    """All tensors of a checkpoint directory, read independently of hf_soups (safetensors' own loader)."""
    import json

    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for file in files:
        out.update(load_file(os.path.join(path, file)))
    return out


def publish(api, path, repo_id, *, private=False, tag=None):
    """Seed a repo on the loopback Hub through the real client; returns the commit sha."""
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(path), repo_id=repo_id)
    if tag:
        api.create_tag(repo_id, tag=tag)
    return info.oid


def check_random_search(search):
    """A demo's random search (`_search` or `_vision_search`): seeded, `K >= 8` distinct draws inside `SEARCH_SPACE`
    (a learning-rate decade, 1-3 epochs, a zero augmentation rate only without augmentation) and log-uniform in the
    learning rate (a 64-draw sample covers both halves of the decade, in log). Returns the draws and the 64."""
    import math

    draws = search.draw_search()
    assert draws == search.draw_search()  # the same seed, the same ingredients
    assert draws != search.draw_search(seed=search.SEARCH_SEED + 1)
    assert len(draws) == search.K >= 8 and len({d["name"] for d in draws}) == len(draws)
    space = search.SEARCH_SPACE
    lr = space["learning_rate"]
    assert math.isclose(lr["high"] / lr["low"], 10.0)  # a decade wide
    for d in draws:
        for name, spec in space.items():
            if spec["distribution"] == "choice":
                assert d[name] in spec["values"]
            elif name != "augmentation_rate" or d["augmentation"] != "none":
                assert spec["low"] <= d[name] <= spec["high"], (d["name"], name)
        assert isinstance(d["epochs"], int) and 1 <= d["epochs"] <= 3
        assert d["augmentation_rate"] == 0.0 or d["augmentation"] != "none"
    many = search.draw_search(k=64)
    mid = math.sqrt(lr["low"] * lr["high"])
    assert 16 <= sum(d["learning_rate"] < mid for d in many) <= 48
    return draws, many
