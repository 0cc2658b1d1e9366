"""Parameter groups of tensor names (the learned soup by layer's groups, the card's summaries). Pure; no torch."""

from __future__ import annotations

__all__ = ["group_of"]

_BLOCKS = frozenset({"layer", "layers", "blocks", "block", "h"})


def group_of(name: str) -> str:
    """The parameter group of a tensor name: its block (`...layer.<n>`, `...layers.<n>`, `...blocks.<n>`,
    `...h.<n>`, the first such part of the name), else the first two parts of its module path
    (`bert.embeddings`, `bert.pooler`, `classifier`)."""
    parts = name.split(".")  # one pass over the components: linear in the name, whatever a checkpoint holds
    for i in range(len(parts) - 2):
        if parts[i] in _BLOCKS and parts[i + 1].isascii() and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2])
    return ".".join(parts[:-1][:2]) if len(parts) > 1 else name
