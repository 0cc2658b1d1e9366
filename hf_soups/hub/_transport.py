"""The transport error class of the HTTP client huggingface_hub uses: a leaf, so the error mapping (`_errors`) and
the bounded requests (`_http`) both import it without importing each other."""

from __future__ import annotations

import huggingface_hub

__all__ = ["TransportError"]

# huggingface_hub >= 2 talks HTTP through httpx2, 1.x through httpx: catch the transport errors of the one in use
if int(huggingface_hub.__version__.split(".", 1)[0]) >= 2:
    from httpx2 import TransportError
else:  # pragma: no cover - exercised by `make test-min` (huggingface_hub 1.3)
    from httpx import TransportError
