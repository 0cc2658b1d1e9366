"""The soup's output directory: checked before any download, built aside, committed atomically and conditionally.

Safety model (see `docs/SECURITY.md`):

- **Only what hf_soups wrote is ever replaced.** Every directory written through [`AtomicDirectory`] holds a small
  `.hf_soups` JSON marker listing the files hf_soups put there (a marker naming anything but soup files, say one
  copied or crafted into a user's directory, is ignored). `overwrite=True` replaces a directory only if it has
  that marker (or is a soup written before markers existed: a card with an hf_soups recipe and nothing but soup
  files) and holds nothing else; never `/`, the home directory, the current directory or one of its parents, the
  Hugging Face cache, or a directory that is, contains or is inside an ingredient (a new directory is not created
  inside an ingredient or the cache either). An empty directory is always fine.
- **The commit is atomic and conditional.** The soup is built in a hidden sibling `.<name>.hf-soups-tmp-<token>` and
  moved into place with one `rename`, which the kernel performs only onto an absent or empty directory. Replacing a
  soup (`overwrite=True`) swaps the two directories in one `renameat2(RENAME_EXCHANGE)` (Linux), then checks that
  what it swapped out is the very directory it checked (same inode, same marker, nothing added) and swaps back if
  not. Where the exchange is not supported, the old soup is first renamed to `.<name>.hf-soups-old-<token>`; a run
  interrupted between the two renames leaves it there, and the next run puts it back. If the target changed during
  the run, nothing there is touched: [`OutputExistsError`] is raised and the new soup is kept next to it as
  `<name>.hf-soups-new-<timestamp>`.
- **Temporaries of other runs are removed only when provably dead.** Each run holds an exclusive `flock` on its own
  `.<name>.hf-soups-lock-<token>` file for its whole life (the kernel drops it when the process dies, in any
  container). A stale sibling is removed only if its token names this machine's boot (`/proc/sys/kernel/random/boot_id`,
  shared by every container on one kernel) and its lock can be taken; a run on another machine sharing the volume is
  never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from .. import constants
from ..atomic_file import write_atomic
from ..errors import DiskFullError, OutputExistsError, OutputNotWritableError, SoupError
from .safe_files import is_inside

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["AtomicDirectory", "MARKER", "read_marker", "record_files"]

logger = logging.getLogger(__name__)

#: The marker file every soup output holds (never uploaded: pushes skip dot files).
MARKER = ".hf_soups"
_TMP, _OLD, _LOCK, _NEW = ".hf-soups-tmp-", ".hf-soups-old-", ".hf-soups-lock-", ".hf-soups-new-"
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_LEGACY_FILES = {"README.md", "config.json", "model.safetensors", "model.safetensors.index.json",
                 "recipe.yaml", "soup_plot.png", *constants.AUX_FILES}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EBUSY, errno.EXDEV, errno.ENOTDIR}


@dataclass(frozen=True)
class _State:
    kind: str  # "absent", "empty" or "soup"
    dev: int = -1
    ino: int = -1
    marker_id: str | None = None


def read_marker(directory: str | os.PathLike[str]) -> dict | None:
    """The `.hf_soups` marker of a directory hf_soups wrote, or `None` (also for soups written before markers,
    recognised by their card holding an hf_soups recipe and nothing but soup files)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MARKER)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _legacy_marker(directory)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > (1 << 20):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if (isinstance(marker, dict) and marker.get("written_by") == "hf_soups"
            and isinstance(marker.get("files"), list) and all(_soup_file(n) for n in marker["files"])):
        return marker  # a marker naming anything but soup files (a copied or crafted one) is no proof
    return None


def record_files(directory: str | os.PathLike[str], names: list[str]) -> None:
    """Add files hf_soups wrote into a finished soup (e.g. the plot `Soup.evaluate` draws) to its marker, atomically,
    so that `overwrite=True` still recognises the directory as hf_soups' own. A directory without a marker is left
    as it is."""
    marker = read_marker(directory)
    path = os.path.join(os.fspath(directory), MARKER)
    if marker is None or not os.path.isfile(path):
        return
    marker["files"] = sorted(set(marker["files"]) | set(names))
    write_atomic(path, json.dumps(marker, indent=1) + "\n")


def _soup_file(name: object) -> bool:
    """Whether `name` is a file name hf_soups writes into a soup (weights, index, config, tokenizer files, card)."""
    return isinstance(name, str) and (name in _LEGACY_FILES or _SHARD.match(name) is not None)


def _legacy_marker(directory: str) -> dict | None:
    try:
        names = os.listdir(directory)
        readme = os.path.join(directory, "README.md")
        if not stat.S_ISREG(os.lstat(readme).st_mode):
            return None
        with open(readme, encoding="utf-8", errors="replace") as f:
            if "hf_soups_recipe:" not in f.read(1 << 22):
                return None
        for n in names:
            if not _soup_file(n) or not stat.S_ISREG(os.lstat(os.path.join(directory, n)).st_mode):
                return None
    except OSError:
        return None
    return {"written_by": "hf_soups", "id": None, "files": names}


def _regular(directory: str, name: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(os.path.join(directory, name)).st_mode)
    except OSError:
        return False


def _describe(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _real(path: str) -> str:
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _hub_caches(extra: Iterable[str]) -> list[str]:
    caches = [p for p in extra if p] + constants.hub_cache_env_dirs()
    try:
        from huggingface_hub import constants as hf_constants

        caches += [hf_constants.HF_HUB_CACHE, hf_constants.HF_HOME]
    except Exception:  # pragma: no cover
        pass
    return [os.path.realpath(os.path.expanduser(c)) for c in caches]


def _is_mount_point(path: str) -> bool:
    """`os.path.ismount`, plus bind mounts of the same file system (listed in `/proc/self/mountinfo` on Linux)."""
    if os.path.ismount(path):
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f}
    except (OSError, IndexError):
        return False
    return os.path.realpath(path) in points


def _host_id() -> str:
    """This kernel's boot id (shared by every container on the machine; differs across machines and reboots)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:
        import hashlib
        import socket

        return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:12]


def _libc_renameat2() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:  # pragma: no cover
        return None


_RENAMEAT2 = _libc_renameat2()


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (`renameat2(RENAME_EXCHANGE)`); `False` where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:  # type: ignore[operator]
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


class AtomicDirectory:
    """Build a directory under a hidden temporary sibling and move it into place only on success, only if the
    target is still what was checked.

    The checks run in the constructor, so creating the object before any download fails fast. Use it as a context
    manager: `with AtomicDirectory(out) as tmp: <write into tmp>`.

    Args:
        output_dir (`str`):
            The final directory. It may be absent or an empty directory; anything else needs `overwrite=True`, and
            then must be a directory hf_soups wrote (see the module docstring).
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a soup hf_soups wrote earlier at `output_dir`.
        ingredients (`Iterable[str]`, *optional*):
            Local ingredient directories: `output_dir` may not be, contain or be inside one of them.
        caches (`Iterable[str]`, *optional*):
            Extra Hugging Face cache directories to protect (the `cache_dir` argument); `HF_HUB_CACHE` and `HF_HOME`
            are always protected.

    Raises:
        [`OutputExistsError`]: `output_dir` holds something hf_soups must not replace, or it changed during the run
            (the new soup is then kept as `<output_dir>.hf-soups-new-<timestamp>`, named in the error).
        [`OutputNotWritableError`]: the location is read-only, not permitted, or a mount point.
        [`DiskFullError`]: the disk filled up while writing; the partial output was removed.
    """

    def __init__(self, output_dir: str | os.PathLike[str], overwrite: bool = False, *,
                 ingredients: Iterable[str] = (), caches: Iterable[str] = ()) -> None:
        self.output_dir = os.path.abspath(os.path.expanduser(os.fspath(output_dir)))  # "~/soup" as in a shell
        self.overwrite = overwrite
        self.parent, self.name = os.path.split(self.output_dir)
        self.tmp_dir: str | None = None
        self._ingredients = [os.path.realpath(os.fspath(p)) for p in ingredients]
        self._caches = _hub_caches(caches)
        self._token: str | None = None
        self._lock_fd: int | None = None
        if os.path.isdir(self.parent):  # first put back a soup an interrupted overwrite left aside
            _clean_stale(self.parent, self.name, None)
        self._state = self._check()

    # ------------------------------------------------------------------ checks (before anything is downloaded)
    def _exists(self, message: str, fix: str) -> OutputExistsError:
        return OutputExistsError(message, file=self.output_dir, fix=fix)

    def _protected_reason(self, real: str) -> str | None:
        if real == os.sep:
            return "the root directory"
        home = os.path.realpath(os.path.expanduser("~"))
        if real == home:
            return "your home directory"
        if is_inside(home, real):
            return f"a parent of your home directory ('{home}')"
        try:
            cwd = os.path.realpath(os.getcwd())
        except OSError:
            cwd = None
        if cwd is not None and real == cwd:
            return "the current working directory"
        if cwd is not None and is_inside(cwd, real):
            return f"a parent of the current working directory ('{cwd}')"
        for cache in self._caches:
            if real == cache or is_inside(real, cache):
                return f"inside the Hugging Face cache ('{cache}')"
            if is_inside(cache, real):
                return f"a parent of the Hugging Face cache ('{cache}')"
        for ing in self._ingredients:
            if real == ing:
                return f"the ingredient '{ing}'"
            if is_inside(real, ing):
                return f"inside the ingredient '{ing}'"
            if is_inside(ing, real):
                return f"a parent of the ingredient '{ing}'"
        return None

    def _check(self) -> _State:
        target = self.output_dir
        if not self.name:
            raise self._exists("the output directory is the root directory; hf_soups never writes a soup there.",
                               fix="choose a new directory, such as ./soup.")
        if os.path.islink(target):
            raise self._exists(
                f"the output directory is a symbolic link (to '{os.readlink(target)}'); hf_soups never replaces a "
                "link with a directory.", fix="pass the link's target as output_dir, or remove the link.")
        if not os.path.lexists(target):
            why = self._protected_reason(os.path.realpath(target))  # a new directory inside an ingredient or cache
            if why is not None:
                raise self._exists(f"the output directory would be {why}; hf_soups never writes a soup there.",
                                   fix="choose a directory outside the ingredients and the Hugging Face cache.")
            self._check_writable()
            return _State("absent")
        if not os.path.isdir(target):
            raise self._exists("a file (not a directory) is at the output path.",
                               fix="choose another output_dir, or move that file away.")
        real = _real(target)
        why = self._protected_reason(real)
        if why is not None:
            raise self._exists(f"the output directory is {why}; hf_soups never writes a soup over it.",
                               fix="choose a new directory for the soup, such as ./soup.")
        if _is_mount_point(target):
            raise OutputNotWritableError(
                "the output directory is a mount point: a soup is moved into place with a rename, which cannot "
                "replace a mount point.", file=target,
                fix=f"use a subdirectory, such as '{os.path.join(target, 'soup')}'.")
        try:
            entries = os.listdir(target)
            st = os.lstat(target)
        except OSError as e:
            raise OutputNotWritableError(f"cannot read the output directory ({e.strerror}).", file=target,
                                         fix="fix its permissions, or choose another output_dir.") from None
        if not entries:
            self._check_writable()
            return _State("empty", st.st_dev, st.st_ino)
        marker = read_marker(target)
        if marker is None:
            raise self._exists(
                f"the output directory holds files hf_soups did not write ({_describe(entries)}); hf_soups replaces "
                "only a soup it wrote, even with overwrite=True.",
                fix="choose another output_dir, or empty that directory yourself.")
        foreign = {n for n in entries if n != MARKER and (n not in marker["files"] or not _regular(target, n))}
        if foreign:
            raise self._exists(
                f"the output directory is a soup hf_soups wrote, but it also holds {_describe(foreign)}, which "
                "hf_soups did not write and will not delete.",
                fix="move those files away, or choose another output_dir.")
        if not self.overwrite:
            raise self._exists("the output directory already holds a soup.",
                               fix="choose another output_dir, or pass overwrite=True to replace it.")
        self._check_writable()
        return _State("soup", st.st_dev, st.st_ino, marker.get("id"))

    def _check_writable(self) -> None:
        """Create and remove a probe file where the soup will be built: a read-only location fails here."""
        place = self.parent
        while not os.path.lexists(place):
            place = os.path.dirname(place)
        if not os.path.isdir(place):
            raise OutputNotWritableError(f"'{place}' is a file, so the output directory cannot be created under it.",
                                         file=self.output_dir, fix="choose another output_dir.")
        try:
            fd, probe = tempfile.mkstemp(prefix=".hf-soups-probe-", dir=place)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputNotWritableError(
                f"cannot write in '{place}' ({e.strerror}).", file=self.output_dir,
                fix="choose an output_dir on a writable disk, or fix the directory's permissions.") from None

    # ------------------------------------------------------------------ building
    def __enter__(self) -> str:
        try:
            os.makedirs(self.parent, exist_ok=True)
            self._acquire_lock()
            _clean_stale(self.parent, self.name, self._token)
            self.tmp_dir = os.path.join(self.parent, f".{self.name}{_TMP}{self._token}")
            os.mkdir(self.tmp_dir)
        except BaseException as e:
            self._release()
            _raise_output_error(e, self.output_dir, self.parent)
            raise
        return self.tmp_dir

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._started()
        try:
            if exc_type is None:
                try:
                    self._commit()
                    return
                except BaseException as e:
                    _raise_output_error(e, self.output_dir, self.parent)
                    raise
            if exc is not None:
                _raise_output_error(exc, self.output_dir, self.parent)
        finally:
            self._release()

    def _acquire_lock(self) -> None:
        for _ in range(5):
            token = f"{_host_id()}-{os.getpid()}-{secrets.token_hex(4)}"
            final = os.path.join(self.parent, f".{self.name}{_LOCK}{token}")
            init = final + ".init"
            fd = os.open(init, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                if os.stat(init).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError(init)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": _host_id()}).encode())
                os.rename(init, final)
            except FileNotFoundError:  # a cleaner took the half-made lock file for a dead one; start again
                os.close(fd)
                continue
            self._token, self._lock_fd = token, fd
            return
        raise OutputNotWritableError("cannot create a lock file next to the output directory.", file=self.output_dir,
                                     fix="check that nothing else keeps deleting files in that directory.")

    def _release(self) -> None:
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if self._token is not None:
            for path in (self._lock_path(self._token), self._lock_path(self._token) + ".init"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_path(self, token: str) -> str:
        return os.path.join(self.parent, f".{self.name}{_LOCK}{token}")

    # ------------------------------------------------------------------ commit
    def _started(self, *, locked: bool = False) -> None:
        """Raise unless the writer was entered (it has a temporary directory, and a lock when `locked`)."""
        if self.tmp_dir is None or (locked and self._token is None):
            raise SoupError("the output writer was used outside its `with` block.", file=self.output_dir,
                            fix="report this bug.")

    def _write_marker(self) -> str:
        self._started()
        marker_id = uuid.uuid4().hex
        files = sorted(n for n in os.listdir(self.tmp_dir) if n != MARKER)
        with open(os.path.join(self.tmp_dir, MARKER), "w", encoding="utf-8") as f:
            json.dump({"written_by": "hf_soups", "version": constants.VERSION, "id": marker_id,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}, f, indent=1)
            f.write("\n")
        return marker_id

    def _commit(self) -> None:
        self._started()
        self._write_marker()
        if constants.fsync_enabled():
            for name in os.listdir(self.tmp_dir):
                fd = os.open(os.path.join(self.tmp_dir, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if self._state.kind == "soup":
            self._replace_soup()
        else:
            self._place()
        self.tmp_dir = None

    def _place(self) -> None:
        """Rename onto an absent or empty directory: the kernel refuses anything else, atomically."""
        self._started()
        try:
            os.rename(self.tmp_dir, self.output_dir)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                self._keep_and_refuse()
            raise

    def _unchanged(self, path: str) -> bool:
        """Whether `path` is the soup directory checked at the start, with nothing added to it."""
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) != (self._state.dev, self._state.ino):
                return False
            marker = read_marker(path)
            return (marker is not None and marker.get("id") == self._state.marker_id
                    and not set(os.listdir(path)) - set(marker["files"]) - {MARKER})
        except OSError:
            return False

    def _replace_soup(self) -> None:
        self._started(locked=True)
        if not os.path.lexists(self.output_dir):  # removed meanwhile: nothing to replace
            return self._place()
        if not self._unchanged(self.output_dir):
            self._keep_and_refuse()
        try:
            exchanged = _exchange(self.tmp_dir, self.output_dir)
        except FileNotFoundError:
            return self._place()
        if exchanged:  # one atomic swap: the old soup is now at tmp_dir
            if not self._unchanged(self.tmp_dir):  # it changed between the check and the swap: undo
                _exchange(self.tmp_dir, self.output_dir)
                self._keep_and_refuse()
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return None
        old = os.path.join(self.parent, f".{self.name}{_OLD}{self._token}")
        os.rename(self.output_dir, old)
        if not self._unchanged(old):
            with contextlib.suppress(OSError):
                os.rename(old, self.output_dir)
            self._keep_and_refuse()
        try:
            os.rename(self.tmp_dir, self.output_dir)
        except OSError:
            with contextlib.suppress(OSError):
                os.rename(old, self.output_dir)
            if os.path.lexists(old):
                kept = _free_name(f"{self.output_dir}.hf-soups-previous-")
                os.rename(old, kept)
                logger.warning("The soup previously at %s was kept as %s.", self.output_dir, kept)
            self._keep_and_refuse()
        shutil.rmtree(old, ignore_errors=True)
        return None

    def _keep_and_refuse(self) -> None:
        self._started()
        kept = _free_name(f"{self.output_dir}{_NEW}")
        os.rename(self.tmp_dir, kept)
        self.tmp_dir = None
        try:
            now = _describe(os.listdir(self.output_dir)) if os.path.isdir(self.output_dir) else "a file"
        except OSError:
            now = "something unreadable"
        raise self._exists(
            f"the output directory changed while the soup was being made (it now holds {now}); it was left exactly "
            f"as it is. The new soup was kept in '{kept}'.",
            fix=f"check what else writes to the output directory, then move '{kept}' where you want it.")


def _free_name(prefix: str) -> str:
    base = prefix + time.strftime("%Y%m%d-%H%M%S")
    name, k = base, 1
    while os.path.lexists(name):
        name, k = f"{base}-{k}", k + 1
    return name


def _raise_output_error(exc: BaseException, output_dir: str, parent: str) -> None:
    if not isinstance(exc, OSError) or isinstance(exc, SoupError):
        return
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError(
            "the disk is full; the partial output was removed.", file=output_dir,
            fix="free space or choose an output_dir on a larger disk, then run again.",
        ) from exc
    filename = os.fspath(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    ours = filename is None or is_inside(os.path.abspath(os.fsdecode(filename)), parent)
    if exc.errno in _NOT_WRITABLE and ours:
        raise OutputNotWritableError(
            f"cannot write the soup ({exc.strerror}); the partial output was removed.", file=output_dir,
            fix="choose an output_dir on a writable disk, or fix the directory's permissions.") from exc


def _lock_if_dead(parent: str, name: str, token: str) -> int | None:
    """A descriptor holding the lock of the run `token` if that run is provably gone, else `None`."""
    if token.split("-", 1)[0] != _host_id() or fcntl is None:
        return None  # another machine (or no flock): never assume it is dead
    lock = os.path.join(parent, f".{name}{_LOCK}{token}")
    for path in (lock, lock + ".init"):
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None  # alive: it holds its lock
        return fd
    # No lock file at all: the owner creates it before its temporaries and removes it after them, so it is gone.
    return os.open(os.devnull, os.O_RDONLY)


def _clean_stale(parent: str, name: str, own: str | None) -> None:
    """Remove temporaries of dead runs for `parent/name`; put back a soup an interrupted overwrite left aside."""
    groups: dict[str, set[str]] = {}
    prefix = f".{name}"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        rest = entry[len(prefix):]
        for mark in (_TMP, _OLD, _LOCK):
            if rest.startswith(mark):
                token = rest[len(mark):].removesuffix(".init")
                if token and token != own:
                    groups.setdefault(token, set()).add(mark)
    target = os.path.join(parent, name)
    for token in groups:
        fd = _lock_if_dead(parent, name, token)
        if fd is None:
            logger.debug("Keeping the temporaries of a live run (%s) next to %s.", token, target)
            continue
        try:
            old = os.path.join(parent, f".{name}{_OLD}{token}")
            if os.path.isdir(old) and not os.path.islink(old):
                if not os.path.lexists(target):
                    os.rename(old, target)
                    logger.warning("Recovered the soup that an interrupted overwrite had moved aside: %s.", target)
                elif read_marker(old) is not None:
                    shutil.rmtree(old, ignore_errors=True)
            tmp = os.path.join(parent, f".{name}{_TMP}{token}")
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            for path in (os.path.join(parent, f".{name}{_LOCK}{token}"),
                         os.path.join(parent, f".{name}{_LOCK}{token}.init")):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        finally:
            os.close(fd)
