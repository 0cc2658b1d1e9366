"""Ingredient references: pure values, no I/O beyond checking whether a local directory exists."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import IngredientNotFoundError, SoupError

__all__ = ["IngredientRef", "Ingredient", "IngredientMeta", "repo_id_problem"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", re.ASCII)
_BAD_ID_FIX = "pass a repo id like 'user/model' or 'user/model@v1' (ASCII letters, digits, '-', '_', '.'; at most 96)."


def repo_id_problem(repo_id: object) -> str | None:
    """Why `repo_id` is not a valid Hub model id, by huggingface_hub's rules (`validate_repo_id`), or `None`.

    Stricter than the Hub only where the Hub is ambiguous: ASCII only, and no trailing newline (Python's `$`).
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        return "a repo id must be a non-empty string"
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        return "a repo id is 'name' or 'namespace/name' of ASCII letters, digits, '-', '_' and '.'"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        return str(e).strip().splitlines()[0][:200]
    return None


def _shown_id(text: str) -> str:
    from .validation import mask_secrets

    shown = mask_secrets(text) or text
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= 120 else f"{shown[:120]}... ({len(shown)} characters)"


@dataclass(frozen=True)
class IngredientRef:
    """What the user asked for: a Hub repo id with an optional revision, or a local directory.

    Args:
        ref (`str`):
            The reference as written: `"user/name"`, `"user/name@revision"` or a local path.
        repo_id (`str`, *optional*):
            The Hub repo id, `None` for a local directory.
        revision (`str`, *optional*):
            The requested revision (branch, tag or sha), `None` for the default branch.
        local_dir (`str`, *optional*):
            The local directory, `None` for a Hub repo.
    """

    ref: str
    repo_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    @classmethod
    def parse(cls, ref: str | os.PathLike[str] | IngredientRef, revision: str | None = None) -> IngredientRef:
        """Parse `user/name`, `user/name@rev` or a local directory.

        Args:
            ref (`str` or `os.PathLike`):
                The reference.
            revision (`str`, *optional*):
                A revision applied when the reference does not carry its own `@rev`.

        Raises:
            [`IngredientNotFoundError`]: the reference is neither an existing directory nor a valid repo id.
            [`SoupError`]: an empty revision after `@`.
        """
        if isinstance(ref, IngredientRef):
            return ref
        text = os.fspath(ref)
        try:
            is_dir = os.path.isdir(os.path.expanduser(text))
        except (ValueError, OSError):  # a NUL byte, a name too long for the file system
            is_dir = False
        if is_dir:  # "~/ckpt" is a local path, as in a shell
            return cls(ref=text, local_dir=os.path.abspath(os.path.expanduser(text)))
        return cls.hub(text, revision, local_hint=True)

    @classmethod
    def hub(cls, ref: str, revision: str | None = None, *, local_hint: bool = False) -> IngredientRef:
        """Parse `user/name` or `user/name@rev` as a Hub repo, never as a local path (items of a listing or a
        collection: a folder of the same name in the working directory is not looked at).

        Args:
            ref (`str`): the reference.
            revision (`str`, *optional*): a revision applied when the reference does not carry its own `@rev`.
            local_hint (`bool`, *optional*): say in the error that a local directory was also accepted.

        Raises:
            [`IngredientNotFoundError`]: not a valid Hub repo id (huggingface_hub's rules).
            [`SoupError`]: an empty revision after `@`.
        """
        text = ref if isinstance(ref, str) else repr(ref)
        repo_id, _, rev = text.partition("@")
        problem = repo_id_problem(repo_id)
        if problem is not None:
            shown = _shown_id(text)
            raise IngredientNotFoundError(
                (f"'{shown}' is neither an existing local directory nor a valid Hub repo id ({problem})." if local_hint
                 else f"'{shown}' is not a valid Hub repo id ({problem})."),
                ingredient=shown, fix=_BAD_ID_FIX + (" Or pass the path of a saved checkpoint." if local_hint else ""),
            )
        if "@" in text and not rev:
            raise SoupError("empty revision after '@'.", ingredient=text, fix="write 'user/model@<branch|tag|sha>'.")
        return cls(ref=text, repo_id=repo_id, revision=rev or revision)


@dataclass(frozen=True)
class Ingredient:
    """One ingredient of a soup, resolved. A frozen value: later stages build new ones with `dataclasses.replace`.

    Attributes:
        ref (`str`): the reference as the user wrote it.
        repo_id (`str` or `None`): the Hub repo id, `None` for a local directory.
        revision (`str` or `None`): the pinned commit sha, `None` for a local directory.
        local_dir (`str` or `None`): where its files are on disk (`None` while streamed).
        weight (`float` or `None`): its weight in the soup (0 for a rejected greedy candidate).
        score (`float` or `None`): its held-out score, when evaluated.
    """

    ref: str
    repo_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None
    weight: float | None = None
    score: float | None = None
    files: tuple[str, ...] = field(default=(), repr=False)
    blob_ids: dict[str, str | None] = field(default_factory=dict, repr=False)
    #: sha256 of each LFS file's content, as the Hub lists it (comparable with a local file's sha256).
    lfs_sha256: dict[str, str] = field(default_factory=dict, repr=False)
    sizes: dict[str, int | None] = field(default_factory=dict, repr=False)
    requested_revision: str | None = field(default=None, repr=False)
    #: An `hf_soups.adapters.AdapterSource` when the ingredient is a PEFT adapter (read as its merged model).
    adapter: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """`repo_id@sha` for a Hub ingredient, the path for a local one."""
        if self.repo_id is None:
            return self.ref
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


@dataclass(frozen=True)
class IngredientMeta:
    """What the verdict needs of one ingredient; gathered from small files and headers only.

    Attributes:
        name (`str`): how the ingredient is named in messages.
        config (`dict`): its `config.json`.
        tensors (`dict[str, TensorInfo]` or `None`): names, dtypes and shapes from the safetensors headers; `None`
            when they cannot be known before the weights are downloaded (pickled `pytorch_model.bin` on the Hub).
        tokenizer_hash (`str` or `None`): sha256 over its tokenizer files' blob ids, `None` if it has none.
        base_model (`tuple[str, ...]` or `None`): `base_model` declared in its model card, if any.
        vocabulary (`Callable[[], str | None]`, *optional*): computes the vocabulary identity (may download the
            tokenizer files); consulted only when the file hashes differ.
        processor (`dict` or `None`): its parsed `preprocessor_config.json` (image processor settings), if any.
    """

    name: str
    config: Mapping[str, Any]
    tensors: Mapping[str, Any] | None  # name -> checkpoint.format.TensorInfo (refs sits below checkpoint/)
    tokenizer_hash: str | None = None
    base_model: tuple[str, ...] | None = None
    vocabulary: Callable[[], str | None] | None = field(default=None, compare=False, repr=False)
    processor: Mapping[str, Any] | None = field(default=None, repr=False)


def local_dir_of(ing: Ingredient) -> str:
    """Where an ingredient's files are on disk (after its download); one that has none here is a bug of hf_soups,
    reported as a typed error rather than an `assert` (which `python -O` removes)."""
    if ing.local_dir is None:
        raise SoupError("the ingredient's files are not on disk at this step.", ingredient=ing.name,
                        fix="report this bug to hf_soups.")
    return ing.local_dir
