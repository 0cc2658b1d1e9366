"""Reading an ingredient's files without ever leaving the ingredient: the one gate every reader goes through.

A file of an ingredient (weights, shard index, config, tokenizer/processor/generation files, model card) is read
only when its real path (every symlink followed) lies inside the ingredient's directory, or, for a huggingface_hub
cache snapshot (`.../models--x--y/snapshots/<sha>`), inside that repo's own blob store (`.../models--x--y/blobs`),
and only when it is a regular file. FIFOs, sockets and devices are refused before they are opened (a FIFO would
block forever), and files are opened with `O_NONBLOCK | O_NOFOLLOW` and checked again on the open descriptor, so a
file swapped for a link between the check and the open is refused too.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable

from ..errors import CorruptCheckpointError, IngredientNotFoundError, UnsafeCheckpointError

__all__ = ["allowed_roots", "is_inside", "resolve_inside", "open_inside", "read_inside", "copy_inside",
           "check_files_inside", "open_regular", "read_regular_file"]

_HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def is_inside(path: str, root: str) -> bool:
    """Whether the (real, absolute) `path` is `root` or below it."""
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def allowed_roots(directory: str | os.PathLike[str]) -> list[str]:
    """The real directories the files of `directory` may resolve into.

    The directory itself; for a huggingface_hub cache snapshot also the repo's `blobs/` folder (a real directory,
    not a link), which is where the cache's snapshot symlinks point.
    """
    real = os.path.realpath(os.fspath(directory))
    roots = [real]
    parent = os.path.dirname(real)
    repo = os.path.dirname(parent)
    if os.path.basename(parent) == "snapshots" and os.path.basename(repo).startswith(_HUB_REPO_PREFIXES):
        blobs = os.path.join(repo, "blobs")
        if os.path.isdir(blobs) and not os.path.islink(blobs):
            roots.append(blobs)
    return roots


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(mode: int, relative: str, ingredient: str | None, file: str | None) -> Exception:
    what = _kind(mode)
    if stat.S_ISDIR(mode):
        return CorruptCheckpointError(
            f"'{relative}' is {what}, not a regular file.", ingredient=ingredient, file=file or relative,
            fix="re-download or re-export the checkpoint; each weight, index or config file must be a file.",
        )
    return UnsafeCheckpointError(
        f"'{relative}' is {what}, not a regular file; hf_soups reads only regular files (reading this could block "
        "forever or read a device).", ingredient=ingredient, file=file or relative,
        fix="replace it with the real file, or remove it from the checkpoint directory.",
    )


def _check_name(relative: str, ingredient: str | None, file: str | None) -> list[str]:
    def refuse(why: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"refers to '{relative}', which {why}.", ingredient=ingredient, file=file or relative,
            fix="only use checkpoints whose files (and index entries) are inside the checkpoint directory.",
        )

    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise refuse("is not a file name")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise refuse("is an absolute path")
    parts = relative.replace("\\", "/").split("/")
    if ".." in parts:
        raise refuse("climbs out of the directory with '..'")
    return [p for p in parts if p not in ("", ".")]


def _escapes(real: str, relative: str, directory: str, ingredient: str | None, file: str | None) -> Exception:
    return UnsafeCheckpointError(
        f"refers to '{relative}', which is a symlink that escapes the checkpoint directory (it resolves to "
        f"'{real}', outside '{os.path.realpath(directory)}'); refused.", ingredient=ingredient, file=file or relative,
        fix="replace the link with a copy of the file you mean to share, or remove it from the checkpoint.",
    )


def resolve_inside(directory: str | os.PathLike[str], relative: str, *, ingredient: str | None = None,
                   file: str | None = None, must_exist: bool = True, regular: bool = True) -> str | None:
    """The real path of `directory/relative`, checked to resolve inside the ingredient and to be a regular file.

    Args:
        directory (`str`): the ingredient's directory (a checkout, or a Hub cache snapshot).
        relative (`str`): the file, relative to `directory` (names from an index are untrusted).
        ingredient, file (`str`, *optional*): named in errors (`file` defaults to `relative`).
        must_exist (`bool`, *optional*, defaults to `True`): raise when the file is absent (else return `None`).
        regular (`bool`, *optional*, defaults to `True`): refuse anything but a regular file.

    Returns:
        `str` or `None`: the real path, or `None` when absent and `must_exist=False`.

    Raises:
        [`UnsafeCheckpointError`]: the path leaves the ingredient (absolute, `..`, a symlink out of it), or is a FIFO,
            socket or device.
        [`CorruptCheckpointError`]: it is a directory.
        [`IngredientNotFoundError`]: it does not exist and `must_exist=True`.
    """
    directory = os.fspath(directory)
    parts = _check_name(relative, ingredient, file)
    real = os.path.realpath(os.path.join(directory, *parts))
    if not any(is_inside(real, root) for root in allowed_roots(directory)):
        raise _escapes(real, relative, directory, ingredient, file)
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        if must_exist:
            raise IngredientNotFoundError(f"'{relative}' is missing.", ingredient=ingredient, file=file or relative,
                                          fix="re-download the checkpoint (all its files).") from None
        return None
    if regular and not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode, relative, ingredient, file)
    return real


def open_inside(directory: str | os.PathLike[str], relative: str, *, ingredient: str | None = None,
                file: str | None = None) -> int:
    """Open `directory/relative` read-only after [`resolve_inside`]; returns a file descriptor (caller closes it).

    The open uses `O_NONBLOCK` (a FIFO swapped in cannot block) and `O_NOFOLLOW`, and the descriptor is checked
    again: a regular file, and (on Linux) really inside the ingredient.

    Raises:
        Everything [`resolve_inside`] raises.
    """
    real = resolve_inside(directory, relative, ingredient=ingredient, file=file)
    if real is None:  # must_exist=True: a missing file raised already
        raise IngredientNotFoundError("the file does not exist.", ingredient=ingredient, file=file or relative)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except OSError as e:
        raise UnsafeCheckpointError(f"'{relative}' changed while being opened ({e.strerror}).", ingredient=ingredient,
                                    file=file or relative, fix="make sure nothing modifies the checkpoint while "
                                    "hf_soups reads it, then run again.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode, relative, ingredient, file)
        if sys.platform.startswith("linux"):
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = real
            if not any(is_inside(opened, root) for root in allowed_roots(directory)):
                raise _escapes(opened, relative, directory, ingredient, file)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_inside(directory: str | os.PathLike[str], relative: str, *, ingredient: str | None = None,
                file: str | None = None, limit: int | None = None) -> bytes:
    """The bytes of `directory/relative`, read through [`open_inside`].

    Args:
        limit (`int`, *optional*): refuse files larger than this many bytes ([`CorruptCheckpointError`]).
    """
    fd = open_inside(directory, relative, ingredient=ingredient, file=file)
    with os.fdopen(fd, "rb") as f:
        if limit is not None and os.fstat(f.fileno()).st_size > limit:
            raise CorruptCheckpointError(f"'{relative}' is larger than {limit} bytes.", ingredient=ingredient,
                                         file=file or relative, fix="check that it is the file it claims to be.")
        return f.read()


def copy_inside(directory: str | os.PathLike[str], relative: str, destination: str, *,
                ingredient: str | None = None) -> None:
    """Copy the bytes of `directory/relative` (checked with [`open_inside`]) to a new regular file `destination`."""
    fd = open_inside(directory, relative, ingredient=ingredient)
    with os.fdopen(fd, "rb") as src, open(destination, "xb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)


def check_files_inside(directory: str | os.PathLike[str], names: tuple[str, ...] | list[str], *,
                       ingredient: str | None = None) -> dict[str, str]:
    """Check every present file of `names` with [`resolve_inside`]; returns name -> real path of those present.

    Used before a verdict, so that an ingredient whose tokenizer, processor or card files point outside it is refused
    before anything is merged, copied or pushed.
    """
    present = {}
    for name in names:
        real = resolve_inside(directory, name, ingredient=ingredient, must_exist=False)
        if real is not None:
            present[name] = real
    return present


def open_regular(path: str | os.PathLike[str], refuse: Callable[[str], Exception]) -> int:
    """Open a user's file (e.g. an image named by evaluation data) read-only, only if it is a regular file.

    Unlike [`open_inside`] the file may lie anywhere and symlinks are followed (they are the user's own), but what
    they lead to must be a regular file: FIFOs, sockets, devices (a link to `/dev/zero`) and directories are refused
    before they are opened, the open uses `O_NONBLOCK` (a FIFO swapped in cannot block) and the descriptor is
    checked again. Returns a blocking file descriptor (the caller closes it).

    Args:
        path (`str` or `os.PathLike`): the file.
        refuse (`Callable[[str], Exception]`): builds the caller's error from the reason (`"does not exist"`,
            `"is a FIFO (named pipe), not a regular file"`, ...).

    Raises:
        What `refuse` builds.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise refuse("does not exist") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise refuse(f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise refuse(f"is {_kind(st.st_mode)}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise refuse(f"cannot be opened ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"is {_kind(st.st_mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | os.PathLike[str], *, limit: int, refuse: Callable[[str], BaseException]) -> bytes:
    """The bytes of a file the user named (symlinks followed), read only if it is a regular file of <= `limit` bytes.

    Opened with [`open_regular`] (the kind checked before the open and on the descriptor, `O_NONBLOCK`); at most
    `limit + 1` bytes are ever read, so a file whose size the system misreports (`/proc`, a growing file) is refused
    too.

    Args:
        path (`str` or `os.PathLike`): the file.
        limit (`int`): the largest size accepted, in bytes.
        refuse (`Callable[[str], BaseException]`): builds the error raised, from a reason such as
            "is a FIFO (named pipe), not a regular file" (phrased to follow the file's name).

    Returns:
        `bytes`: the whole file.

    Raises:
        `FileNotFoundError`: the file does not exist (the caller names it in its own terms).
        Whatever `refuse` builds: the file is not a regular file, is larger than `limit`, or cannot be read.
    """
    path = os.fspath(path)
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except (OSError, ValueError):
        pass  # open_regular says why it cannot be read
    with os.fdopen(open_regular(path, refuse), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise refuse(f"is larger than {limit} bytes ({size} bytes)")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise refuse(f"cannot be read ({e.strerror})") from None
    if len(data) > limit:
        raise refuse(f"is larger than {limit} bytes")
    return data
