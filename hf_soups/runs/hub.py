"""Reading a Trainer run pushed to the Hub: `checkpoint-<step>/` folders (`hub_strategy="all_checkpoints"`), or one
commit per save (`hub_strategy="every_save"`). Used by [`hf_soups.runs.run_checkpoints`]."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from ..checkpoint.layout import TRAINER_STATE
from ..errors import SoupError
from ..refs import IngredientRef
from .folders import (CHECKPOINT_RE, TRAINING_STATE_PATTERNS, RunCheckpoint, _STEP_IN_MESSAGE, _WEIGHT_FILES,
                      _global_step, consolidation_problem)
from ..hub._errors import hub_errors

__all__ = ["hub_run"]

Fetch = Callable[[list[RunCheckpoint]], list[RunCheckpoint]]


def hub_run(run: str, *, revision: str | None, token: Any, endpoint: str | None, cache_dir: str | None
            ) -> tuple[str, str, list[RunCheckpoint], tuple[str, str] | None, Fetch]:
    """List a Hub run's checkpoints at one pinned commit.

    Returns:
        `(repo_id, sha, checkpoints, (newest trainer_state.json path, its name) or None, fetch)`: `fetch(chosen)` downloads the chosen folders'
        model files (all_checkpoints; never the optimizer, scheduler, RNG or training-argument files) and returns
        them with their local directories; for every_save runs it returns them as they are (pinned `repo@sha`).

    Raises:
        [`IngredientNotFoundError`], [`AuthenticationError`], [`HubConnectionError`]: the repo cannot be read.
    """
    ref = IngredientRef.parse(run, revision)
    repo_id = ref.repo_id or run
    api = HfApi(endpoint=endpoint)
    with hub_errors(ref.ref, token_given=bool(token), revision=ref.revision, token=token, endpoint=endpoint):
        info = api.repo_info(repo_id, revision=ref.revision, token=token)
        sha = _pinned(info.sha, repo_id)
        files = [s.rfilename for s in info.siblings or []]
        folders: dict[int, list[str]] = {}
        for f in files:
            head, _, rest = f.partition("/")
            m = CHECKPOINT_RE.match(head)
            if m and rest:
                folders.setdefault(int(m.group(1)), []).append(rest)
        if folders:
            return repo_id, sha, *_all_checkpoints(repo_id, sha, folders, token, endpoint, cache_dir)
        listed, history = _every_save(api, repo_id, sha, token, endpoint, cache_dir)
    return repo_id, sha, listed, history, lambda chosen: chosen


_SHA = re.compile(r"^[0-9a-f]{40}$")


def _pinned(sha: Any, repo_id: str) -> str:
    """A commit sha from the Hub's answer, checked before it names a ref or a local folder."""
    if not isinstance(sha, str) or not _SHA.match(sha):
        raise SoupError(f"the Hub answered {str(sha)[:60]!r} as a commit sha, not 40 hex digits.", ingredient=repo_id,
                        fix="check the endpoint (HF_ENDPOINT) is a Hugging Face Hub.")
    return sha


def _download(repo_id: str, sha: str, path: str, token: Any, endpoint: str | None, cache_dir: str | None) -> str:
    return hf_hub_download(repo_id, path, revision=sha, token=token, endpoint=endpoint, cache_dir=cache_dir)


def _all_checkpoints(repo_id: str, sha: str, folders: dict[int, list[str]], token: Any, endpoint: str | None,
                     cache_dir: str | None) -> tuple[list[RunCheckpoint], tuple[str, str] | None, Fetch]:
    listed = [RunCheckpoint(step, f"{repo_id}@{sha}/checkpoint-{step}", repo_id=repo_id, sha=sha)
              for step in sorted(folders)]
    newest = listed[-1].step
    history = None
    if TRAINER_STATE in folders[newest]:
        path = _download(repo_id, sha, f"checkpoint-{newest}/{TRAINER_STATE}", token, endpoint, cache_dir)
        history = (path, f"{repo_id}@{sha}/checkpoint-{newest}/trainer_state.json")

    def fetch(chosen: list[RunCheckpoint]) -> list[RunCheckpoint]:
        for c in chosen:  # before any download: a folder of shards gets the consolidation command
            consolidation_problem(sorted({f.split("/")[0] for f in folders[c.step]}), c.name)
        root = download_checkpoint_folders(repo_id, sha, [c.step for c in chosen], token, endpoint, cache_dir)
        return [RunCheckpoint(c.step, c.name, os.path.join(root, f"checkpoint-{c.step}"), c.repo_id, c.sha, c.value)
                for c in chosen]

    return listed, history, fetch


def download_checkpoint_folders(repo_id: str, sha: str, steps: list[int], token: Any, endpoint: str | None,
                                cache_dir: str | None) -> str:
    """Download the model files of `checkpoint-<step>/` folders of a Hub run at a pinned sha (never the optimizer,
    scheduler, RNG or training-argument files) into a folder of their own; returns that folder."""
    from huggingface_hub import constants

    # real files in a folder of their own (a cache snapshot's links point outside a checkpoint subfolder)
    local = os.path.join(cache_dir or constants.HF_HUB_CACHE, "hf-soups-runs", repo_id.replace("/", "--"),
                         _pinned(sha, repo_id))
    with hub_errors(f"{repo_id}@{sha}", token_given=bool(token), token=token, endpoint=endpoint):
        return snapshot_download(repo_id, revision=sha, token=token, endpoint=endpoint, local_dir=local,
                                 allow_patterns=[f"checkpoint-{s}/*" for s in steps],
                                 ignore_patterns=[f"*/{p}" for p in TRAINING_STATE_PATTERNS] + ["*/*/*"])




def fetch_run_folders(refs: list[Any], token: Any, endpoint: str | None, cache_dir: str | None) -> list[Any]:
    """Replay: each `user/run@<sha>/checkpoint-<step>` ref downloaded (model files only) and kept under that name.

    Raises:
        [`IngredientNotFoundError`]: the run has no such folder at that sha.
        [`SoupError`]: the folder holds no consolidated weights (the fix names the consolidation command).
    """
    from ..errors import IngredientNotFoundError
    from ..recipes.recipe import RUN_FOLDER_RE

    out = []
    for ref in refs:
        m = RUN_FOLDER_RE.match(getattr(ref, "ref", "")) if getattr(ref, "local_dir", None) is None else None
        if m is None:
            out.append(ref)
            continue
        folder = os.path.join(download_checkpoint_folders(m["repo"], m["sha"], [int(m["step"])], token, endpoint,
                                                          cache_dir), f"checkpoint-{m['step']}")
        if not os.path.isdir(folder):
            raise IngredientNotFoundError(f"{m['repo']} has no folder checkpoint-{m['step']} at that commit.",
                                          ingredient=ref.ref, fix="check the recipe's ingredient names the run's "
                                          "checkpoint folder as its soup's card does.")
        consolidation_problem(os.listdir(folder), ref.ref)
        out.append(IngredientRef(ref=ref.ref, local_dir=folder))
    return out


def _every_save(api: HfApi, repo_id: str, sha: str, token: Any, endpoint: str | None, cache_dir: str | None
                ) -> tuple[list[RunCheckpoint], tuple[str, str] | None]:
    """Each commit that changed the weights (oldest first), named by the step in its message or its trainer state."""
    commits = list(reversed(api.list_repo_commits(repo_id, revision=sha, token=token)))
    wanted = [*_WEIGHT_FILES, TRAINER_STATE]
    previous: tuple[tuple[str, str], ...] = ()
    previous_state: str | None = None
    by_step: dict[int, RunCheckpoint] = {}
    head_state = False
    for commit in commits:
        _pinned(commit.commit_id, repo_id)
        infos = api.get_paths_info(repo_id, wanted, revision=commit.commit_id, token=token)
        blobs = {i.path: (i.lfs.sha256 if getattr(i, "lfs", None) else getattr(i, "blob_id", "")) for i in infos
                 if hasattr(i, "size")}
        weights = tuple(sorted((p, b or "") for p, b in blobs.items() if p in _WEIGHT_FILES))
        head_state = TRAINER_STATE in blobs
        state_changed = head_state and blobs[TRAINER_STATE] != previous_state
        previous_state = blobs.get(TRAINER_STATE)
        if not weights or weights == previous:
            continue
        previous = weights
        m = _STEP_IN_MESSAGE.search(f"{commit.title}\n{commit.message}")
        step = int(m.group(1)) if m else None
        if step is None and state_changed:  # a trainer state carried over from an older commit names no step here
            found = _global_step(_download(repo_id, commit.commit_id, TRAINER_STATE, token, endpoint,
                                           cache_dir))
            step = found if found >= 0 else None
        if step is None:
            import logging

            logging.getLogger(__name__).warning(
                "%s@%s changed the weights but names no step (commit %r): left out.", repo_id, commit.commit_id,
                commit.title)
            continue
        by_step[step] = RunCheckpoint(step, f"{repo_id}@{commit.commit_id}", repo_id=repo_id, sha=commit.commit_id)
    if not commits:
        raise SoupError("the repo has no commit.", ingredient=repo_id, fix="push the run with the Trainer first.")
    history = None
    if head_state:
        path = _download(repo_id, sha, TRAINER_STATE, token, endpoint, cache_dir)
        history = (path, f"{repo_id}@{sha}/trainer_state.json")
    return sorted(by_step.values(), key=lambda c: c.step), history
