"""Preflight cost: bytes a failing compatibility verdict downloads per ingredient (goal: <= 1 MB), counted by the
loopback Hub server, for two real-size MiniLM classifiers (90 MB of weights each) that disagree on num_labels.

Usage: python benchmarks/preflight.py
"""

from __future__ import annotations

import json
import os
import socket
import sys
from hf_soups import HubAccess

_s = socket.socket()
_s.bind(("127.0.0.1", 0))
PORT = _s.getsockname()[1]
_s.close()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{PORT}"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    import tempfile

    import torch
    from huggingface_hub import HfApi
    from science_text import minilm_dir
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_soups import IncompatibleIngredientsError, MergeOptions, soup_from_hub
    from hf_soups.testing.hub import LoopbackHub

    work = tempfile.mkdtemp(prefix="hf-soups-preflight-")
    sizes = {}
    with LoopbackHub(tokens={"hf_bench": "bench"}, port=PORT) as hub:
        api = HfApi(token="hf_bench")
        for labels in (2, 3):
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=labels)
            path = os.path.join(work, f"minilm-{labels}")
            model.save_pretrained(path)
            AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
            api.create_repo(f"bench/minilm-{labels}-labels")
            api.upload_folder(folder_path=path, repo_id=f"bench/minilm-{labels}-labels")
            sizes[f"bench/minilm-{labels}-labels"] = sum(os.path.getsize(os.path.join(path,
                                                         f)) for f in os.listdir(path))
        hub.reset_counters()
        try:
            soup_from_hub(["bench/minilm-2-labels", "bench/minilm-3-labels"],
                          access=HubAccess(cache_dir=os.path.join(work, "cache")),
                          merge_options=MergeOptions(progress=False))
            raise SystemExit("expected an incompatible verdict")
        except IncompatibleIngredientsError as e:
            verdict = str(e).splitlines()[1].strip()
        served = dict(hub.bytes_served)
    result = {"repo_bytes": sizes, "bytes_served_by_preflight": served, "verdict": verdict,
              "max_per_ingredient": max(served.values()), "goal_bytes": 1_000_000}
    for repo, n in served.items():
        print(f"{repo}: preflight fetched {n:,} bytes of {sizes[repo]:,} ({100 * n / sizes[repo]:.2f}%)")
    print(f"max per ingredient {result['max_per_ingredient']:,} bytes (goal <= 1,000,000)")
    out = os.path.join(HERE, "results", "preflight.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {out}")


if __name__ == "__main__":
    main()
