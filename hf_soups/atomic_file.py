"""The one way hf_soups writes a file in place: into a private temporary sibling, flushed and fsynced, then moved
over the target with one `os.replace` (or, with `replace=False`, linked to it only if it is absent).

A concurrent reader sees the old file or the new one, never a part; a crash leaves no partial file under the target's
name. Whole output directories go through [`hf_soups.checkpoint.atomic.AtomicDirectory`] instead.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_atomic"]


def _umask() -> int:
    """The process umask, read without changing it where the system allows (`/proc/self/status`)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - not Linux
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int | None = None,
                 replace: bool = True, durable: bool = True) -> bool:
    """Write `data` to `path` atomically.

    The bytes go to a temporary file created next to `path` with `tempfile.mkstemp` (a fresh name, mode 0600 while it
    is written), are flushed and fsynced (unless `durable=False`), and the file gets its final permissions before it
    takes `path`'s name.

    Args:
        path (`str` or `os.PathLike`):
            The file to write; its directory must exist.
        data (`str` or `bytes`):
            The content; a `str` is written as UTF-8.
        mode (`int`, *optional*):
            The file's permissions, e.g. `0o600` for a secret. Defaults to what `open()` would give a new file
            (`0o666` less the umask).
        replace (`bool`, *optional*, defaults to `True`):
            Replace an existing `path`. With `False`, an existing `path` is kept as it is (a concurrent first writer
            wins) and `False` is returned.
        durable (`bool`, *optional*, defaults to `True`):
            fsync the bytes before the rename. `False` for a cache whose entries are verified when read (a crash
            may then leave a torn file under `path`, never a partly written one under another name).

    Returns:
        `bool`: whether `path` now holds `data` (always `True` with `replace=True`).

    Raises:
        `OSError`: the directory is not writable, the disk is full, ...; the temporary file is removed.
    """
    path = os.fspath(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not replace:
            try:
                os.link(tmp, path)  # never replaces
            except FileExistsError:
                return False
            return True
        os.replace(tmp, path)
        tmp = None
        return True
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
