"""One contender of the merge benchmark, run as its own process: `python _contenders.py NAME OUT IN...`.

Prints one JSON line with the seconds spent on the work itself (after imports) and the process's private memory
(RssAnon) when the work started. The parent measures the wall time and samples RssAnon while the process runs.
"""

from __future__ import annotations

import json
import os
import sys
import time

SHARD = os.environ.get("BENCH_SHARD_SIZE", "500MB")


def rss_anon(pid: int | str = "self") -> int:
    """A process's private anonymous memory in bytes (RssAnon in /proc/<pid>/status; this process by default)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def report(start: float, anon_start: int) -> None:
    print(json.dumps({"seconds": time.perf_counter() - start, "rss_anon_start": anon_start}))


def _files(path: str) -> list[str]:
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))


def floor(out: str, inputs: list[str]) -> None:
    """Read every input byte once (pread into one reused buffer) and write one model's bytes."""
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    anon = rss_anon()
    start = time.perf_counter()
    first_size = 0
    for i, path in enumerate(inputs):
        for file in _files(path):
            fd = os.open(file, os.O_RDONLY)
            offset = 0
            while True:
                n = os.preadv(fd, [view], offset)
                if n == 0:
                    break
                offset += n
            os.close(fd)
            if i == 0:
                first_size += offset
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.bin"), "wb") as f:
        left = first_size
        while left > 0:
            n = min(left, len(buf))
            f.write(view[:n])
            left -= n
    report(start, anon)


def hf_soups(out: str, inputs: list[str]) -> None:
    import transformers

    from hf_soups import MergeOptions, soup_from_hub

    # Imports stay outside every contender's timer (mergekit's are too): the architecture check needs the model class.
    getattr(transformers, "BertForSequenceClassification")

    device = os.environ.get("BENCH_DEVICE") or None  # "cpu", "cuda", or unset (hf_soups' default)
    anon = rss_anon()
    start = time.perf_counter()
    soup_from_hub(inputs, output_dir=out, merge_options=MergeOptions(progress=False, max_shard_size=SHARD,
                                                                     device=device))
    report(start, anon)


def hf_soups_gpu(out: str, inputs: list[str]) -> None:
    os.environ["BENCH_DEVICE"] = "cuda"
    hf_soups(out, inputs)


def idle(out: str, inputs: list[str]) -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import hf_soups  # noqa: F401

    print(json.dumps({"seconds": 0.0, "rss_anon_start": rss_anon()}))


def naive(out: str, inputs: list[str]) -> None:
    """The straightforward way: K x from_pretrained, average the state dicts, save_pretrained."""
    import torch
    from transformers import AutoModelForSequenceClassification

    anon = rss_anon()
    start = time.perf_counter()
    models = [AutoModelForSequenceClassification.from_pretrained(p) for p in inputs]
    states = [m.state_dict() for m in models]
    avg = {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) if states[0][k].is_floating_point()
           else states[0][k] for k in states[0]}
    models[0].load_state_dict(avg)
    models[0].save_pretrained(out, max_shard_size=SHARD)
    report(start, anon)


def mergekit(out: str, inputs: list[str]) -> None:
    """mergekit's `linear` merge through its Python API (run in mergekit's own venv)."""
    import torch  # noqa: F401
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate({
        "merge_method": "linear",
        "models": [{"model": p, "parameters": {"weight": 1.0}} for p in inputs],
        "parameters": {"normalize": True},
        "dtype": os.environ.get("BENCH_DTYPE", "float32"),
    })
    anon = rss_anon()
    start = time.perf_counter()
    run_merge(config, out, options=MergeOptions(copy_tokenizer=False, out_shard_size=int(SHARD.rstrip("MB")) * 10**6,
                                                lazy_unpickle=True, safe_serialization=True))
    report(start, anon)


def hf_soups_model_stock(out: str, inputs: list[str]) -> None:
    """hf_soups' Model Stock (`soup_from_hub(method="model_stock")`: the statistics pass, then the engine) on
    BENCH_BASE and the fine-tunes."""
    import transformers

    from hf_soups import MergeOptions, soup_from_hub

    getattr(transformers, "BertForSequenceClassification")  # imports outside the timer, as for the uniform soup
    anon = rss_anon()
    start = time.perf_counter()
    soup_from_hub(inputs, method="model_stock", base=os.environ["BENCH_BASE"], output_dir=out,
                  merge_options=MergeOptions(progress=False, max_shard_size=SHARD))
    report(start, anon)


def mergekit_model_stock(out: str, inputs: list[str]) -> None:
    """mergekit's `model_stock` (its default, not filter-wise) through its Python API (run in mergekit's own venv).

    BENCH_DTYPE is the dtype mergekit computes in; BENCH_OUT_DTYPE (optional) the dtype it writes.
    """
    import torch  # noqa: F401
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate({
        "merge_method": "model_stock",
        "base_model": os.environ["BENCH_BASE"],
        "models": [{"model": p} for p in inputs],
        "dtype": os.environ.get("BENCH_DTYPE", "float32"),
        "out_dtype": os.environ.get("BENCH_OUT_DTYPE") or None,
    })
    anon = rss_anon()
    start = time.perf_counter()
    run_merge(config, out, options=MergeOptions(copy_tokenizer=False, out_shard_size=int(SHARD.rstrip("MB")) * 10**6,
                                                lazy_unpickle=True, safe_serialization=True))
    report(start, anon)


if __name__ == "__main__":
    name, out, *inputs = sys.argv[1:]
    globals()[name](out, inputs)
