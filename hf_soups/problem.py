"""`Problem`: one finding of the verdict, a leaf value that the verdict, the architecture check and the adapters share
(so that none of them imports another for it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Problem"]


@dataclass(frozen=True)
class Problem:
    """One finding of the verdict.

    Attributes:
        ingredient (`str`): the ingredient concerned.
        field (`str`): the config field, or `tensor <name>`.
        message (`str`): what differs.
        fix (`str`): what to do.
        severity (`"error"` or `"warning"`): errors make the set incompatible.
    """

    ingredient: str
    field: str
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"[{self.ingredient}] {self.field}: {self.message} Fix: {self.fix}"
