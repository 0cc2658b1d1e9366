"""Byte sources: random-access readers over a file's bytes. Local files live here; HTTP ranges live in `hub/`.

Local files are also memory-mapped (read-only pages shared with the page cache, as `safetensors.safe_open` does), so
the merge engine reads weights without copying them. A mapped file that another process truncates while it is read
can kill the reading process with `SIGBUS` (as with safetensors' and transformers' own mmap loads); the output is
never affected, since it is committed atomically only after `SafetensorsReader.check_unchanged()` has confirmed that
every input still has the size and modification time it had when it was opened.
"""

from __future__ import annotations

import mmap
import os
import threading
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
    """A local file: `pread` into caller-owned buffers, or a zero-copy view of its memory-mapped pages.

    The mapping is private and never written (`MAP_PRIVATE`), so its pages are the page cache's own: they count as
    file-backed, reclaimable memory, not as the process's private memory.

    Pass `fd` to read a descriptor already opened (and checked) by the caller; the source then owns it.
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None, *, fd: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name = name or os.path.basename(self.path)
        self._fd = fd if fd is not None else os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(self._fd)
        self.size = st.st_size
        self._stamp = (st.st_size, st.st_mtime_ns)
        self._map: mmap.mmap | None = None
        self._map_lock = threading.Lock()

    def mapped(self) -> memoryview | None:
        """The whole file as a memory-mapped, zero-copy buffer (`None` for an empty file)."""
        if self._map is None:
            with self._map_lock:
                if self._map is None and self.size > 0:
                    # ACCESS_COPY (MAP_PRIVATE) gives a writable buffer, which torch.frombuffer wants; nothing writes
                    # to it, so no page is ever copied and the file is never modified.
                    self._map = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_COPY)
        return memoryview(self._map) if self._map is not None else None

    def changed(self) -> str | None:
        """Why the file is no longer the one opened (size or modification time changed, or replaced), or `None`."""
        now = os.fstat(self._fd)
        if (now.st_size, now.st_mtime_ns) != self._stamp:
            return f"it changed while it was read (size {self._stamp[0]} -> {now.st_size} bytes)"
        try:
            on_disk = os.stat(self.path)
        except OSError:
            return "it was deleted while it was read"
        if (on_disk.st_ino, on_disk.st_dev) != (now.st_ino, now.st_dev):
            return "it was replaced by another file while it was read"
        return None

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

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a tensor still views the pages: they are unmapped when it is freed
                pass
            self._map = None
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
