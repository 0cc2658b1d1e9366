"""Byte sources: random-access readers over a file's bytes. Local files live here; HTTP ranges live in `hub/`."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

__all__ = ["ByteSource", "LocalFileSource"]


@runtime_checkable
class ByteSource(Protocol):
    """Random access to the bytes of one file. Implementations must be safe to call from several threads."""

    name: str
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes starting at `offset` (fewer only at the end of the file)."""

    def readinto(self, offset: int, buffer: memoryview) -> int:
        """Fill `buffer` with the bytes at `offset`; returns the number of bytes read."""

    def close(self) -> None:
        """Release the underlying resources."""


class LocalFileSource:
    """A local file read with `pread` into caller-owned buffers: no mmap, so the process RSS stays honest.

    Pass `fd` to read a descriptor already opened (and checked) by the caller; the source then owns it.
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None, *, fd: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name = name or os.path.basename(self.path)
        self._fd = fd if fd is not None else os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        chunks = []
        while length > 0:
            chunk = os.pread(self._fd, min(length, 1 << 30), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def readinto(self, offset: int, buffer: memoryview) -> int:
        total = 0
        view = buffer.cast("B") if buffer.format != "B" else buffer
        while total < len(view):
            n = os.preadv(self._fd, [view[total : total + (1 << 30)]], offset + total)
            if n == 0:
                break
            total += n
        return total

    def advise_sequential(self) -> None:
        """Hint the kernel to read ahead (no-op where unsupported)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LocalFileSource({self.path!r}, size={self.size})"
