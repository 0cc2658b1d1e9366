"""Upload a soup directory as one commit."""

from __future__ import annotations

from huggingface_hub import CommitInfo, HfApi

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
    """
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
