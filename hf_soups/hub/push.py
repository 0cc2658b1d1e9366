"""Upload a soup directory as one commit."""

from __future__ import annotations

import os

from huggingface_hub import CommitInfo, HfApi

from ..checkpoint.safe_files import resolve_inside
from ._errors import hub_errors

__all__ = ["push_folder"]


def push_folder(
    folder: str,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Create `repo_id` when missing and upload `folder` in a single commit.

    Uploading is idempotent: re-running after a failure uploads again and lands one complete commit.

    Raises:
        [`AuthenticationError`]: no token, or the token cannot write to `repo_id`.
        [`PushError`]: the upload or the commit failed; the local folder is untouched.
        [`UnsafeCheckpointError`]: a file to upload is a link out of `folder`, a FIFO or a device (nothing is sent).
    """
    for dirpath, dirnames, names in os.walk(folder):  # upload only what is really inside the folder
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in dirnames + [n for n in names if not n.startswith(".") and not n.endswith(".tmp")]:
            rel = os.path.relpath(os.path.join(dirpath, name), folder)
            resolve_inside(folder, rel, file=rel, regular=name in names)
    api = HfApi(endpoint=endpoint)
    with hub_errors(repo_id, token_given=bool(token), push=True):
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        return api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            token=token,
            commit_message=commit_message or "Upload model soup with hf_soups",
            ignore_patterns=[".*", "*.tmp"],
        )
