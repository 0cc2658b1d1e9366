"""Held-out logits computed once: an on-disk cache keyed by what the logits depend on.

Every model an [`Evaluator`] scores in memory is identified by the sha256 of the tensors it runs with (every entry
of its `state_dict`, fp32 as evaluated, with its config and class): an ingredient is the same model in greedy's
ranking pass, in `Soup.evaluate`'s rows (best individual, ensembles, greedy ensemble), in the diagnosis and in the
next run. A greedy candidate is hashed and kept only once it passes the bar and ran on the evaluator's own batches
(see `Evaluator.score_against`; candidates may run the examples the ingredients missed first, on other batches:
`Evaluator.order_candidates`). The digest is the
sha256 of each tensor's own sha256 (computed on up to one thread per core). The evaluation set is identified by its
preprocessed inputs (the token batches themselves; a set preprocessed lazily, one batch at a time, e.g. images
through a processor or a transform, is not cached), the task, its columns, `max_samples`, the batch size, the
maximum length, the device type, the autocast dtype, the torch thread count and the torch/transformers versions.

Where: `$HF_SOUPS_CACHE/logits/` (else `$HF_HOME/hf_soups/logits/`), one safetensors file per entry (no pickle),
written atomically ([`write_atomic`], not fsynced: a torn entry fails its HMAC), at most `HF_SOUPS_LOGIT_CACHE_MB`
(default 1024) MiB in all: the least recently used entries are removed beyond it. `HF_SOUPS_LOGIT_CACHE=0` turns the
cache off. Offloaded (dispatched) models and `accelerate launch` runs are not cached.

Trust: an entry is used only when it is a regular file (not a link) owned by this user and not writable by group or
others, in a folder with the same properties, and when its HMAC under this user's cache secret (the architecture
cache's, see `hf_soups.architecture`) matches its key and its bytes. Anything else (a planted, foreign, edited,
truncated or moved entry) is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import struct
from collections.abc import Iterator
from typing import Any

import torch

from ..atomic_file import write_atomic

__all__ = ["cache_dir", "model_digest", "dataset_key", "get", "put"]

logger = logging.getLogger(__name__)

_FORMAT = "hf_soups-logits-2"  # 2: a model digest hashes per-tensor digests
_UNSAFE = stat.S_IWGRP | stat.S_IWOTH


def cache_dir() -> str | None:
    """The cache folder, or `None` when the cache is off (`HF_SOUPS_LOGIT_CACHE=0`, or no trustworthy secret)."""
    from ..architecture import _secret

    if os.environ.get("HF_SOUPS_LOGIT_CACHE", "1").lower() in {"0", "false", "no", "off"} or _secret() is None:
        return None
    root = os.environ.get("HF_SOUPS_CACHE")
    if not root:
        from huggingface_hub import constants as hub_constants

        root = os.path.join(hub_constants.HF_HOME, "hf_soups")
    return os.path.join(root, "logits")


def max_bytes() -> int:
    """The cache's size bound in bytes (`HF_SOUPS_LOGIT_CACHE_MB`, default 1024)."""
    return int(float(os.environ.get("HF_SOUPS_LOGIT_CACHE_MB", "1024")) * 1024 * 1024)


def _hash_tensor(h: Any, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    if t.numel():  # the tensor's own buffer (no bytes copy of the model); `.cpu()` only copies off-CPU tensors
        h.update(memoryview(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))


def model_digest(model: Any) -> str | None:
    """The sha256 of what `model`'s outputs depend on: its class, config and every `state_dict` tensor (names,
    dtypes, shapes, bytes); `None` for a dispatched/offloaded model (its weights are not all in memory)."""
    if getattr(model, "hf_device_map", None):
        return None
    h = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        settings = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    tensors = sorted(model.state_dict().items())
    if any(getattr(t, "device", None) is not None and t.device.type == "meta" for _, t in tensors):
        return None
    for digest in _tensor_digests(tensors):
        h.update(digest)
    return h.hexdigest()


_PARALLEL_DIGEST_BYTES = 16 * 1024 * 1024  # smaller models are hashed faster than threads start


def _tensor_digests(tensors: list[tuple[str, torch.Tensor]]) -> Iterator[bytes]:
    """Each tensor's own sha256 (name, dtype, shape, bytes), in order; for a model of 16 MiB or more, computed by up to
    one thread per core (hashlib releases the GIL on large buffers: the digest takes about a core count's fraction
    of one stream's time)."""
    def one(item: tuple[str, torch.Tensor]) -> bytes:
        h = hashlib.sha256()
        _hash_tensor(h, *item)
        return h.digest()

    size = sum(t.numel() * t.element_size() for _, t in tensors)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_cpu = all(t.device.type == "cpu" for _, t in tensors)  # (a device's tensors are copied one at a time)
    workers = min(len(tensors), cores, 8) if size >= _PARALLEL_DIGEST_BYTES and on_cpu else 1
    if workers <= 1:
        yield from map(one, tensors)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf-soups-digest") as pool:
        yield from pool.map(one, tensors)


def dataset_key(evaluator: Any) -> str | None:
    """The sha256 of an evaluator's set and settings (see the module docstring); `None` when the inputs are not held
    as tensors (a lazily preprocessed set: images through a processor or a transform)."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256(_FORMAT.encode())
    try:
        versions = [version("transformers"), torch.__version__]
    except PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        return None
    prepared = evaluator.prepared
    h.update(json.dumps({"versions": versions, "task": evaluator.task, "columns": evaluator.columns,
                         "rows": prepared.rows, "shape": list(prepared.shape), "batch_size": evaluator.batch_size,
                         "max_length": evaluator.max_length, "max_samples": evaluator.max_samples,
                         "device": evaluator.device.type, "dtype": str(evaluator.dtype),
                         "threads": torch.get_num_threads()},
                        sort_keys=True, default=str).encode())
    if not isinstance(evaluator.batches, (list, tuple)):
        return None
    for idx, inputs in evaluator.batches:
        _hash_tensor(h, "rows", idx)
        for name in sorted(inputs):
            _hash_tensor(h, name, inputs[name])
    return h.hexdigest()


def _mac(key: str, payload: bytes) -> str | None:
    from ..architecture import _secret

    secret = _secret()
    if secret is None:
        return None
    return hmac.new(secret, key.encode() + b"\0" + hashlib.sha256(payload).digest(), hashlib.sha256).hexdigest()


def _private_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _owned(st)


def _owned(st: os.stat_result) -> bool:
    from ..architecture import _private

    return _private(st, _UNSAFE)


def _path(folder: str, key: str) -> str:
    return os.path.join(folder, hashlib.sha256(key.encode()).hexdigest() + ".safetensors")


def get(key: str) -> torch.Tensor | None:
    """The cached logits for `key` (a model digest and a dataset key joined), or `None` (a miss, or an entry that
    fails the trust rules of the module docstring)."""
    folder = cache_dir()
    if folder is None or not _private_dir(folder):
        return None
    path = _path(folder, key)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _owned(st) or st.st_size > max_bytes():
            logger.debug("ignoring the logits cache entry %s: not a private regular file of this user", path)
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        expected = _mac(key, data[8 + n:] + json.dumps({k: v for k, v in meta.items() if k != "mac"},
                                                        sort_keys=True).encode())
        if expected is None or not hmac.compare_digest(str(meta.get("mac", "")), expected) or meta.get("key") != key:
            logger.debug("ignoring the logits cache entry %s: not written by this user's hf_soups", path)
            return None
        from safetensors.torch import load

        logits = load(data)["logits"]
    except Exception as e:
        logger.debug("ignoring the logits cache entry %s: %s", path, e)
        return None
    try:
        os.utime(path)  # least recently used goes first
    except OSError:
        pass
    return logits


def put(key: str, logits: torch.Tensor) -> None:
    """Store `logits` under `key` (atomically, private to this user), then evict the least recently used entries
    beyond the size bound. A cache that cannot be written is skipped with a debug log."""
    folder = cache_dir()
    if folder is None:
        return
    from safetensors.torch import save

    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _private_dir(folder):
            logger.debug("not writing the logits cache %s: the folder is not private to this user", folder)
            return
        tensor = logits.detach().cpu().contiguous()
        body = save({"logits": tensor})  # the tensor bytes follow the header
        (n,) = struct.unpack("<Q", body[:8])
        meta = {"key": key, "format": _FORMAT}
        mac = _mac(key, body[8 + n:] + json.dumps(meta, sort_keys=True).encode())
        if mac is None:
            return
        data = save({"logits": tensor}, metadata={**meta, "mac": mac})
        write_atomic(_path(folder, key), data, mode=0o600, durable=False)  # a torn entry fails its HMAC
        _evict(folder)
    except OSError as e:
        logger.debug("not writing the logits cache in %s: %s", folder, e)


def _evict(folder: str) -> None:
    entries = []
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, name))
    total, bound = sum(e[1] for e in entries), max_bytes()
    for _, size, name in sorted(entries):
        if total <= bound:
            break
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            continue
        total -= size
