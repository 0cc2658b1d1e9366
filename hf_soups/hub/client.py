"""Resolve, preflight and download ingredients with huggingface_hub. The only module that fetches from the Hub."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants

from .. import constants
from ..atomic_file import write_atomic
from ..checkpoint.format import TensorInfo
from ..checkpoint.layout import FULL_MODEL, download_patterns
from ..checkpoint.meta import card_base_model, read_config, read_processor_config, tokenizer_identity
from ..checkpoint.reader import read_shard_index
from ..errors import CorruptCheckpointError, HubConnectionError, NoSafetensorsError, SoupError
from ..refs import Ingredient, IngredientMeta, IngredientRef
from ..validation import mask_secrets
from ._errors import hub_errors
from ._http import Deadline, api_get_json, endpoint_url

_SHA = re.compile(r"[0-9a-f]{40}")

__all__ = ["resolve", "fetch_meta", "download", "needed_patterns"]


def _offline() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


def resolve(ref: IngredientRef, *, token: str | bool | None = None, endpoint: str | None = None,
            cache_dir: str | None = None) -> Ingredient:
    """Pin a Hub reference to a commit sha (pin, then fetch).

    Raises:
        [`IngredientNotFoundError`], [`RevisionNotFoundError`], [`AuthenticationError`].
    """
    if ref.is_local or ref.repo_id is None:
        return Ingredient(ref=ref.ref, local_dir=ref.local_dir)
    # `None` is resolved as "main" explicitly: some Hub-compatible servers only route /revision/<rev>
    revision = ref.revision or hf_constants.DEFAULT_REVISION
    with hub_errors(mask_secrets(ref.ref) or ref.ref, token_given=bool(token), revision=mask_secrets(revision),
                    token=token, endpoint=endpoint):
        if _offline():
            path = snapshot_download(ref.repo_id, revision=revision, local_files_only=True,
                                     cache_dir=cache_dir, token=token)
            files = tuple(sorted(_walk(path)))
            return Ingredient(ref=ref.ref, repo_id=ref.repo_id, revision=os.path.basename(path), files=files,
                              local_dir=path, requested_revision=ref.revision)
        info = _model_info(ref.repo_id, revision, token=token, endpoint=endpoint, what=mask_secrets(ref.ref) or ref.ref)
    if not isinstance(info.sha, str) or not _SHA.fullmatch(info.sha):
        raise HubConnectionError(f"the endpoint pinned it to {str(info.sha)[:60]!r}, not a 40-hex commit sha.",
                                 ingredient=mask_secrets(ref.ref) or ref.ref,
                                 fix="check the endpoint (HF_ENDPOINT / endpoint=).")
    files = tuple(s.rfilename for s in info.siblings or [])
    blob_ids = {s.rfilename: getattr(s, "blob_id", None) for s in info.siblings or []}
    sizes = {s.rfilename: getattr(s, "size", None) for s in info.siblings or []}
    lfs = {s.rfilename: getattr(getattr(s, "lfs", None), "sha256", None) for s in info.siblings or []}
    return Ingredient(ref=ref.ref, repo_id=ref.repo_id, revision=info.sha, files=files, blob_ids=blob_ids,
                      sizes=sizes, requested_revision=ref.revision,
                      lfs_sha256={f: h for f, h in lfs.items() if isinstance(h, str)})


def _model_info(repo_id: str, revision: str, *, token: str | bool | None, endpoint: str | None, what: str) -> Any:
    """`HfApi.model_info(..., files_metadata=True)` through [`api_get_json`]: a redirect off the endpoint's origin is
    refused, and a silent or trickling endpoint ends after `HF_SOUPS_HUB_TIMEOUT` a try."""
    from urllib.parse import quote

    from huggingface_hub.hf_api import ModelInfo

    url = f"{endpoint_url(endpoint)}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    try:
        data, _ = api_get_json(url, params={"blobs": True}, token=token, endpoint=endpoint,
                               what=f"model info of {what}",
                               deadline=Deadline(constants.LISTING_DEADLINE, f"model info of {what}", endpoint))
    except HubConnectionError as e:  # name the ingredient whose pin failed, as every other Hub error does
        if e.ingredient is None:
            e.ingredient = what
        raise
    if not isinstance(data, dict):
        raise HubConnectionError(f"the endpoint answered with a {type(data).__name__}, not the repo's info.",
                                 ingredient=what, fix="check the endpoint (HF_ENDPOINT / endpoint=).")
    return ModelInfo(**{"siblings": None, **data})


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.append(os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/"))
    return out


def needed_patterns(files: Sequence[str], *, weights: bool = True, allow_pickle: bool = False) -> list[str]:
    """The files of a repo worth downloading: config, tokenizer/processor files, card, and each layout's weights
    and marker (`checkpoint/layout.py`: a full model, an adapter)."""
    return download_patterns(files, weights=weights, allow_pickle=allow_pickle)


def _hub_id(ing: Ingredient) -> str:
    """The ingredient's Hub repo id; a local ingredient reaching a Hub-only step is a bug reported as such."""
    if ing.repo_id is None:
        raise SoupError("a local ingredient reached a step that reads from the Hub.", ingredient=ing.name,
                        fix="report this bug; pass the ingredient as a Hub repo id or as a local folder only.")
    return ing.repo_id


def _download_small(ing: Ingredient, filename: str, token: Any, cache_dir: str | None, endpoint: str | None) -> str | None:
    if filename not in ing.files:
        return None
    repo_id = _hub_id(ing)
    with hub_errors(ing.ref, token_given=bool(token), token=token):
        return hf_hub_download(repo_id, filename, revision=ing.revision, token=token, cache_dir=cache_dir,
                               endpoint=endpoint)


def fetch_meta(ing: Ingredient, *, token: str | bool | None = None, cache_dir: str | None = None,
               endpoint: str | None = None, allow_pickle: bool = False) -> IngredientMeta:
    """Gather what the compatibility verdict needs from config.json, the card and safetensors headers only.

    Raises:
        [`NoSafetensorsError`]: the repo has no safetensors weights (and `allow_pickle=False`).
        [`UnsafeCheckpointError`]: the index names files outside the repo.
        [`CorruptCheckpointError`]: a header cannot be parsed.
    """
    name = ing.name
    if ing.local_dir is not None:  # offline: everything comes from the cache snapshot
        from ..checkpoint.local import local_meta

        return local_meta(ing.local_dir, name)
    _hub_id(ing)
    config = read_config(_download_small(ing, "config.json", token, cache_dir, endpoint) or "", name)
    base_model = card_base_model(_download_small(ing, "README.md", token, cache_dir, endpoint))
    processor = read_processor_config(_download_small(ing, "preprocessor_config.json", token, cache_dir, endpoint), name)
    blob_ids = ing.blob_ids
    tensors: dict[str, TensorInfo] = {}
    found = FULL_MODEL.find(ing.files)
    if found is not None and not found.pickled and found.index:
        index_path = _download_small(ing, found.file, token, cache_dir, endpoint)
        if index_path is None:  # listed in its files, so downloaded or an error was raised
            raise CorruptCheckpointError("the shard index could not be read.", ingredient=name, file=found.file)
        weight_map, shards = read_shard_index(os.path.dirname(index_path), name, found.file)
    elif found is not None and not found.pickled:
        weight_map, shards = None, [found.file]
    else:
        if allow_pickle and FULL_MODEL.has_pickle(ing.files):
            return IngredientMeta(name, config, None, tokenizer_identity(blob_ids), base_model,  # names unknown until read
                                  processor=processor)
        raise NoSafetensorsError(
            "the repository has no safetensors weights"
            + (" (only pickled pytorch_model.bin, which can run code when loaded)." if any(
                f.endswith(".bin") for f in ing.files) else "."),
            ingredient=name,
            fix="ask the author to upload safetensors weights (the Hub's convert Space does it), or pass "
                "allow_pickle=True to load .bin files with torch.load(weights_only=True).",
        )
    from .stream import read_remote_header

    for shard in shards:  # validated as strictly as local files: the verdict predicts what the soup refuses
        infos, _ = read_remote_header(ing, shard, token=token, endpoint=endpoint)
        for tname, info in infos.items():
            if weight_map is not None and weight_map.get(tname) != shard:
                continue
            tensors[tname] = info
    if weight_map is not None:
        lost = [t for t in weight_map if t not in tensors]
        if lost:  # the local reader refuses this too
            raise CorruptCheckpointError(
                f"the index maps it to '{weight_map[lost[0]]}', whose header does not hold it.", ingredient=name,
                tensor=lost[0], file=FULL_MODEL.safetensors_index,
                fix="re-upload the checkpoint; the index and shards disagree.",
            )
    return IngredientMeta(name, config, tensors, tokenizer_identity(blob_ids), base_model,
                          vocabulary=_lazy_vocabulary(ing, token, cache_dir, endpoint), processor=processor)


def _lazy_vocabulary(ing: Ingredient, token: Any, cache_dir: str | None, endpoint: str | None) -> Any:
    """Downloads the tokenizer files only if the verdict asks (when file hashes differ between ingredients)."""
    import functools

    from ..checkpoint.meta import vocabulary_identity

    @functools.cache
    def compute() -> str | None:
        names = ["tokenizer.json"] if "tokenizer.json" in ing.files else list(constants.TOKENIZER_IDENTITY_FILES)
        files = {n: p for n in names if (p := _download_small(ing, n, token, cache_dir, endpoint))}
        return vocabulary_identity(files)

    return compute


def _remember_revision(ing: Ingredient, cache_dir: str | None) -> None:
    """Record `requested revision -> sha` in the cache, so offline runs resolve the revision too.

    The cache layout is huggingface_hub's documented one (`<cache>/models--org--name/refs/<revision>` holds the
    sha); the file is written atomically, and only when it is missing or stale.
    """
    from huggingface_hub.file_download import repo_folder_name  # public (no underscore), not re-exported

    requested = ing.requested_revision or "main"
    if ing.repo_id is None or ing.revision is None or requested == ing.revision:
        return
    repo_folder = repo_folder_name(repo_id=ing.repo_id, repo_type="model")
    refs = os.path.join(cache_dir or hf_constants.HF_HUB_CACHE, repo_folder, "refs")
    path = os.path.join(refs, *requested.split("/"))  # branch names may hold '/', as huggingface_hub writes them
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == ing.revision:
                return
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, ing.revision, mode=0o600)


def download(ing: Ingredient, *, token: str | bool | None = None, cache_dir: str | None = None,
             endpoint: str | None = None, weights: bool = True, allow_pickle: bool = False) -> str:
    """Download what a soup needs of one ingredient at its pinned sha; returns the snapshot directory."""
    if ing.local_dir is not None and not weights:
        return ing.local_dir
    repo_id = _hub_id(ing)
    patterns = needed_patterns(ing.files, weights=weights, allow_pickle=allow_pickle)
    with hub_errors(ing.ref, token_given=bool(token), revision=ing.revision):
        path = snapshot_download(repo_id, revision=ing.revision, allow_patterns=patterns, token=token,
                                 cache_dir=cache_dir, endpoint=endpoint, local_files_only=_offline())
    if not _offline():
        _remember_revision(ing, cache_dir)
    return path
