"""The loopback Hub's records (files, commits, repos, collections), its error, and the pure helpers the
routes share (commit history, ids, dates, the card metadata the Hub derives from a repo's files)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["_SHA_RE", "_LFS_SUFFIXES", "_LFS_THRESHOLD", "_File", "_Commit", "_Repo", "_Collection", "_HubError",
           "_EXPANDABLE", "_commit_history", "_iso", "_object_id", "_as_list", "_derive_card"]

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".png", ".jpg")
_LFS_THRESHOLD = 10 * 1024 * 1024


@dataclass
class _File:
    blob_id: str  # git sha1 of the content (what the Hub calls oid/blobId for regular files)
    sha256: str
    size: int
    lfs: bool


@dataclass
class _Commit:
    sha: str
    files: dict[str, _File]
    parent: str | None
    message: str
    date: float


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    gated: str | bool = False  # False, "auto" or "manual"
    created: float = field(default_factory=time.time)


@dataclass
class _Collection:
    slug: str
    title: str
    namespace: str
    private: bool
    description: str | None
    object_id: str
    items: list[dict[str, Any]] = field(default_factory=list)
    updated: float = field(default_factory=time.time)


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


_EXPANDABLE = {"author", "baseModels", "cardData", "config", "createdAt", "disabled", "downloads", "gated",
               "lastModified", "library_name", "likes", "pipeline_tag", "private", "sha", "siblings", "tags",
               "trendingScore"}


def _commit_history(repo: _Repo, head: _Commit) -> list[dict[str, Any]]:
    """`GET /api/models/<repo>/commits/<rev>`: the commits reachable from `head`, newest first (one page)."""
    out, commit = [], head
    while commit is not None:
        title, _, body = commit.message.partition("\n")
        out.append({"id": commit.sha, "title": title, "message": body, "authors": [], "date": _iso(commit.date)})
        commit = repo.commits.get(commit.parent) if commit.parent else None
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def _object_id(key: str) -> str:
    """A stable 24-hex id, shaped like the Hub's MongoDB object ids."""
    return hashlib.sha1(key.encode()).hexdigest()[:24]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _derive_card(readme: bytes | None, config: bytes | None, files: list[str]) -> dict[str, Any]:
    """Card metadata, config summary, pipeline tag and tags, derived from a repo's files as the Hub does.

    `base_model: org/base` in the card gives the tags `base_model:org/base` and `base_model:<relation>:org/base`; the
    relation is the card's `base_model_relation`, else inferred from the files: `adapter` (adapter_config.json),
    `quantized` (GGUF), `merge` (several base models), otherwise `finetune`.
    """
    import yaml

    card: dict[str, Any] = {}
    text = (readme or b"").decode("utf-8", "replace")
    m = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if m:
        try:
            loaded = yaml.safe_load(m.group(1))
            card = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            card = {}
    cfg: dict[str, Any] = {}
    try:
        loaded = json.loads(config) if config else {}
        cfg = loaded if isinstance(loaded, dict) else {}
    except ValueError:
        pass
    pipeline = card.get("pipeline_tag")
    if pipeline is None:
        from ...evaluation.tasks import head_for  # the package's one architecture -> task table

        head = head_for({"architectures": [str(a) for a in cfg.get("architectures") or []]})
        pipeline = head.pipeline_tag if head else None
    library = card.get("library_name") or ("transformers" if config is not None else None)
    tags: list[str] = []
    for t in [library, "safetensors" if any(f.endswith(".safetensors") for f in files) else None,
              cfg.get("model_type"), pipeline, *_as_list(card.get("tags"))]:
        if t and t not in tags:
            tags.append(str(t))
    bases = _as_list(card.get("base_model"))
    relation = card.get("base_model_relation") or (
        "adapter" if "adapter_config.json" in files else "quantized" if any(f.endswith(".gguf") for f in files)
        else "merge" if len(bases) > 1 else "finetune")
    for base in bases:
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))]
    tags += [f"license:{x}" for x in _as_list(card.get("license"))]
    tags += _as_list(card.get("language")) + ["region:us"]
    summary = {k: cfg[k] for k in ("architectures", "model_type") if k in cfg} if config is not None else None
    return {"cardData": card or None, "config": summary, "tags": tags, "pipeline_tag": pipeline,
            "library_name": library}
