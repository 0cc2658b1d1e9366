"""One error tree for hf_soups.

Every public error derives from [`SoupError`]. Subclasses also inherit the closest standard-library error
(`FileNotFoundError`, `ValueError`, `PermissionError`, `OSError`), so callers can catch either. Each error names
the ingredient, the tensor or file when it knows them, and says how to fix the problem.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SoupError",
    "UnknownArgumentError",
    "IncompatibleIngredientsError",
    "IngredientNotFoundError",
    "RevisionNotFoundError",
    "AuthenticationError",
    "NoSafetensorsError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "NonFiniteTensorError",
    "OutputExistsError",
    "DiskFullError",
    "OutputNotWritableError",
    "PushError",
    "LabelMismatchError",
    "EvaluationError",
    "RecipeError",
    "InvalidArgumentError",
    "HubConnectionError",
    "HubError",
]


class SoupError(Exception):
    """Root of every error raised by hf_soups.

    Args:
        message (`str`):
            What went wrong.
        ingredient (`str`, *optional*):
            The ingredient (reference as the user wrote it) the problem is about.
        tensor (`str`, *optional*):
            The tensor name the problem is about.
        file (`str`, *optional*):
            The file the problem is about.
        fix (`str`, *optional*):
            What the user can do about it, in Python terms.
        param (`str`, *optional*):
            The argument the problem is about (`"eval_dataset"`, `"token"`, ...); the CLI names its flag instead.
    """

    def __init__(
        self,
        message: str,
        *,
        ingredient: str | None = None,
        tensor: str | None = None,
        file: str | None = None,
        fix: str | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message
        self.param = param
        self.ingredient = ingredient
        self.tensor = tensor
        self.file = file
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.ingredient is not None:
            where.append(f"ingredient '{self.ingredient}'")
        if self.file is not None:
            where.append(f"file '{self.file}'")
        if self.tensor is not None:
            where.append(f"tensor '{self.tensor}'")
        text = f"{'; '.join(where)}: {self.message}" if where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self) -> tuple[Any, ...]:  # keep errors picklable across processes
        return (_rebuild, (type(self), self.message, self.ingredient, self.tensor, self.file, self.fix, self.param))


def _rebuild(cls: type, message: str, ingredient: Any, tensor: Any, file: Any, fix: Any,
             param: Any = None) -> SoupError:
    err = cls.__new__(cls)
    SoupError.__init__(err, message, ingredient=ingredient, tensor=tensor, file=file, fix=fix, param=param)
    return err


class IncompatibleIngredientsError(SoupError, ValueError):
    """The compatibility verdict is negative; `.report` holds every problem found."""

    def __init__(self, report: Any) -> None:
        self.report = report
        lines = [f"  - {p}" for p in report.problems]  # each problem carries its own fix
        super().__init__("the ingredients cannot be souped together:\n" + "\n".join(lines))


class IngredientNotFoundError(SoupError, FileNotFoundError):
    """A repository, local directory or file does not exist."""


class RevisionNotFoundError(IngredientNotFoundError):
    """The repository exists but the revision (branch, tag or sha) does not."""


class AuthenticationError(SoupError, PermissionError):
    """The repository is private or gated and no (valid) token was given."""


class NoSafetensorsError(SoupError, FileNotFoundError):
    """An ingredient has no safetensors weights (for example only `pytorch_model.bin`)."""


class UnsafeCheckpointError(SoupError, ValueError):
    """Reading the ingredient would run foreign code or leave its directory; refused."""


class CorruptCheckpointError(SoupError, ValueError):
    """A checkpoint file is truncated, malformed or inconsistent."""


class NonFiniteTensorError(SoupError, ValueError):
    """An ingredient holds NaN or Inf values."""


class OutputExistsError(SoupError, FileExistsError):
    """The output directory holds something hf_soups must not replace, or changed while the soup was being made."""


class DiskFullError(SoupError, OSError):
    """Writing the soup ran out of disk space; the partial output was removed."""


class OutputNotWritableError(SoupError, PermissionError):
    """The output location cannot be written (read-only, no permission, a mount point); checked before any download."""


class PushError(SoupError, OSError):
    """Uploading the soup failed; the local soup is intact and the push can be retried."""


class LabelMismatchError(SoupError, ValueError):
    """The labels of an evaluation dataset do not match the model's label map."""


class EvaluationError(SoupError, ValueError):
    """An evaluation dataset or metric cannot be used."""


class RecipeError(SoupError, ValueError):
    """A recipe file is malformed or names an unknown method."""


class InvalidArgumentError(SoupError, ValueError):
    """An argument (weights, dtype, max_shard_size, ...) is invalid; raised before anything is read or downloaded."""


class UnknownArgumentError(InvalidArgumentError, TypeError):
    """A keyword argument the function does not take; the message names the argument or option field that says it
    (`split=` -> `eval_spec=EvalSpec(split=...)`). A `TypeError` too, as Python's own error for it is."""


class HubError(SoupError):
    """The Hub endpoint (or a mirror standing for it) answered in a way hf_soups refuses: a next page or redirect to
    another origin (which would carry the token there), a listing past its page, size or time limits, an answer that
    is not what the Hub's API returns. The base class of [`HubConnectionError`]."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub could not be reached, answered with a server error after retries, ran past its time limits, or sent the
    request to another origin; nothing partial is left."""
