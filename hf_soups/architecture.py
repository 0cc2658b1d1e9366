"""The architecture check: instantiate the config's model on the meta device and compare it with the headers.

`accelerate.init_empty_weights()` builds the skeleton without allocating memory, so this catches a checkpoint that
does not match its own config (a renamed, missing or reshaped tensor) before any weight is read.

Building the skeleton means importing transformers' modeling code, which costs seconds of start-up. What the check
needs from the skeleton (names, shapes, tied groups, the class's ignore patterns) is a pure function of the
transformers version, the class and the config, so it is kept as a small JSON file in
`$HF_HOME/hf_soups/architectures/` (or `$HF_SOUPS_CACHE/architectures/`), keyed by a hash of those three and
hf_soups' version: the next soup of the same architecture skips the import. `HF_SOUPS_ARCH_CACHE=0` turns the cache
off.

The cache folder may be shared (a group-writable `HF_HOME` on a cluster) and its keys are computable from public
data, so nothing read from it is trusted for what it says: an entry is used only when it is a regular file owned by
this user, writable by no one else, well-formed, and carries an HMAC-SHA256 (over its key and contents) under a
per-user secret, `$XDG_CONFIG_HOME/hf_soups/architecture-cache.key` (default `~/.config/hf_soups/`; created 0600 in
a 0700 folder, refused when it or its folder is owned by someone else or open to group or others: the cache is then
off). Any other entry (planted, copied from another user's cache, edited, truncated, of the wrong types) is a miss:
the architecture is built and the entry replaced. A cached expectation can thus never make the verdict more
permissive than building the model would.

The first soup of an architecture still needs the build. The CLI starts it in a helper Python process ([`prefetch`])
before it imports torch, so that the helper's imports overlap the CLI's own start-up and merge on another core; the
check then waits for the helper's cache entry (or builds in-process if the helper wrote none). This module imports
neither torch nor transformers until a build is needed.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import constants
from .atomic_file import write_atomic
from .problem import Problem

if TYPE_CHECKING:
    from .checkpoint.format import TensorInfo

__all__ = ["ExpectedArchitecture", "expected_architecture", "architecture_problems", "prefetch"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1
_MAX_CACHE_FILE = 64 * 1024 * 1024  # a cache entry larger than this is not ours: ignored
_MAX_CONFIG_FILE = 16 * 1024 * 1024  # larger configs (rare) are left to the check's own reading
_PREFETCH_WAIT_S = 300.0
_KEY_FILE = "architecture-cache.key"
_secrets: dict[str, bytes | None] = {}  # key file -> its secret (None: refused), read once per process
_pending: dict[str, subprocess.Popen] = {}  # cache path -> the helper process building it
_pending_lock = threading.Lock()


@dataclass(frozen=True)
class ExpectedArchitecture:
    """What the config's model writes with `save_pretrained`, and what its class says may be absent or extra."""

    shapes: dict[str, tuple[int, ...]]
    tied: tuple[frozenset[str], ...]
    model_names: frozenset[str]
    has_position_ids: bool
    ignore_unexpected: tuple[str, ...]
    ignore_missing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": _CACHE_FORMAT, "shapes": {n: list(s) for n, s in self.shapes.items()},
                "tied": [sorted(g) for g in self.tied], "model_names": sorted(self.model_names),
                "has_position_ids": self.has_position_ids, "ignore_unexpected": list(self.ignore_unexpected),
                "ignore_missing": list(self.ignore_missing)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExpectedArchitecture:
        """Parse a cache entry, strictly: every field of its exact type, every pattern a valid regex.

        Raises:
            `ValueError`: another cache format, a missing field, a field of another type, or a pattern that does not
                compile (the caller treats the entry as absent).
        """
        if data.get("format") != _CACHE_FORMAT:
            raise ValueError("other cache format")
        shapes, tied = data.get("shapes"), data.get("tied")
        if not isinstance(shapes, dict) or not all(_int_list(s) for s in shapes.values()):
            raise ValueError("shapes must map names to lists of non-negative integers")
        if not isinstance(tied, list) or not all(_str_list(g) for g in tied):
            raise ValueError("tied must be a list of lists of names")
        fields = {k: data.get(k) for k in ("model_names", "ignore_unexpected", "ignore_missing")}
        if not all(_str_list(v) for v in fields.values()) or not isinstance(data.get("has_position_ids"), bool):
            raise ValueError("model_names and the ignore patterns must be lists of strings, has_position_ids a bool")
        for pattern in fields["ignore_unexpected"] + fields["ignore_missing"]:  # type: ignore[operator]
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as e:
                raise ValueError(f"ignore pattern {pattern[:40]!r} is not a regular expression: {e}") from None
        return cls(shapes={n: tuple(s) for n, s in shapes.items()}, tied=tuple(frozenset(g) for g in tied),
                   model_names=frozenset(fields["model_names"]),  # type: ignore[arg-type]
                   has_position_ids=data["has_position_ids"],
                   ignore_unexpected=tuple(fields["ignore_unexpected"]),  # type: ignore[arg-type]
                   ignore_missing=tuple(fields["ignore_missing"]))  # type: ignore[arg-type]


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(d) is int and d >= 0 for d in value)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _build(config: Mapping[str, Any]) -> ExpectedArchitecture | None:
    """Build the model on the meta device and read what the check needs from it (imports transformers)."""
    import transformers
    from accelerate import init_empty_weights

    archs = config.get("architectures") or []
    cls = _model_class(config)
    if cls is None:
        return None
    try:
        cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "auto_map"})
        with init_empty_weights(include_buffers=True):
            model = cls(cfg)
        state = model.state_dict()
        model_names = frozenset(state)
        try:  # the names save_pretrained writes (transformers >= 5 renames some weights on load and back on save)
            from transformers.core_model_loading import revert_weight_conversion

            state = revert_weight_conversion(model, dict(state))
        except Exception:
            pass
    except Exception as e:  # a config transformers cannot build: reported by the caller as a warning
        logger.debug("cannot instantiate %s on meta: %s", archs, e)
        return None
    groups: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), set()).add(name)
    return ExpectedArchitecture(
        shapes={name: tuple(t.shape) for name, t in state.items()},
        tied=tuple(frozenset(g) for g in groups.values() if len(g) > 1),
        model_names=model_names,
        has_position_ids=any(n.endswith("position_ids") for n, _ in model.named_buffers()),
        ignore_unexpected=tuple(sorted(set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()))),
        ignore_missing=tuple(sorted(set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ()))),
    )


def _model_class(config: Mapping[str, Any]) -> Any:
    """The transformers class `architectures[0]` names, or `None` (never remote code)."""
    import transformers

    archs = config.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs and isinstance(archs[0], str) else None
    return cls if cls is not None and hasattr(cls, "config_class") else None


def _cache_path(config: Mapping[str, Any]) -> str | None:
    """The cache file for this (transformers version, class, config), or `None` when the cache is off."""
    if os.environ.get("HF_SOUPS_ARCH_CACHE", "1").lower() in {"0", "false", "no", "off"}:
        return None
    if _secret() is None:  # no trustworthy per-user secret: entries could not be authenticated
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        transformers_version = version("transformers")
    except PackageNotFoundError:
        return None
    volatile = {"_name_or_path", "transformers_version", "auto_map"}
    key = json.dumps({"transformers": transformers_version, "format": _CACHE_FORMAT,
                      "hf_soups": constants.VERSION,  # (the build itself may change between releases)
                      "config": {k: v for k, v in config.items() if k not in volatile}},
                     sort_keys=True, default=str)
    root = os.environ.get("HF_SOUPS_CACHE")
    if not root:
        from huggingface_hub import constants as hub_constants  # HF_HOME, XDG_CACHE_HOME, ~/.cache/huggingface

        root = os.path.join(hub_constants.HF_HOME, "hf_soups")
    return os.path.join(root, "architectures", hashlib.sha256(key.encode()).hexdigest() + ".json")


def _read_cache(path: str) -> tuple[bool, ExpectedArchitecture | None]:
    """`(found, expectation)`: `(True, None)` is a cached "not a transformers class"; `(False, None)` a miss (also
    for an entry that is corrupt, malformed, unauthenticated, foreign, writable by others or not a regular file: it
    is rebuilt and replaced)."""
    data = _read_json_object(path, _MAX_CACHE_FILE, private=True)
    secret = _secret()
    if data is None or secret is None:
        return False, None
    mac = data.pop("mac", None)
    if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(secret, path, data)):
        logger.debug("ignoring the architecture cache entry %s: not written by this user's hf_soups", path)
        return False, None
    if data.get("format") == _CACHE_FORMAT and "unknown_class" in data:
        return (True, None) if isinstance(data["unknown_class"], str) and len(data) == 2 else (False, None)
    try:
        return True, ExpectedArchitecture.from_json(data)
    except Exception as e:
        logger.debug("ignoring the architecture cache entry %s: %s", path, e)
        return False, None


def _mac(secret: bytes, path: str, entry: Mapping[str, Any]) -> str:
    """HMAC-SHA256 of an entry under this user's secret, bound to its key (the file name): an entry cannot be
    forged, edited, or moved to another architecture's key."""
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    message = os.path.basename(path).encode() + b"\0" + body.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _key_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hf_soups", _KEY_FILE)


def _private(st: os.stat_result, mask: int) -> bool:
    """Owned by this user and without the `mask` permission bits (always true where there are no uids)."""
    if not hasattr(os, "getuid"):
        return True
    return st.st_uid == os.getuid() and not st.st_mode & mask


def _secret() -> bytes | None:
    """This user's cache secret (32 random bytes), created on first use; `None` (the cache is off) when its file or
    folder is a link, owned by someone else, or open to group or others, or cannot be created."""
    path = _key_path()
    if path in _secrets:
        return _secrets[path]
    folder = os.path.dirname(path)
    secret, why = None, ""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or not _private(st, 0o022):
            why = "its folder is a link, owned by someone else, or writable by group or others"
        else:
            if not os.path.lexists(path):
                _create_secret(path)
            secret, why = _load_secret(path)
    except OSError as e:
        why = str(e)
    if secret is None:
        logger.warning("The architecture cache is off: its per-user key %s cannot be used (%s). Remove it (hf_soups "
                       "creates a new one, mode 0600) or set XDG_CONFIG_HOME to a private folder.", path, why)
    _secrets[path] = secret
    return secret


def _create_secret(path: str) -> None:
    # never replaces: a concurrent first use keeps the key the other process wrote
    write_atomic(path, os.urandom(32).hex(), mode=0o600, replace=False)


def _load_secret(path: str) -> tuple[bytes | None, str]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        return None, str(e)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st, 0o077):
            return None, "it is not a regular file owned by this user and closed to group and others"
        raw = os.read(fd, 129).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not re.fullmatch(r"[0-9a-f]{64}", raw):
        return None, "it is not 64 hexadecimal digits"
    return bytes.fromhex(raw), ""


def _read_json_object(path: str, limit: int, *, private: bool = False) -> dict[str, Any] | None:
    """The JSON object in `path`, or `None` when it is absent, a link, not a regular file (a FIFO would block),
    larger than `limit` bytes, or not a JSON object; with `private`, also when it is owned by another user or
    writable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (private and not _private(st, 0o022)):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(limit + 1)
        data = json.loads(raw) if len(raw) <= limit else None
        return data if isinstance(data, dict) else None
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def _write_cache(path: str, entry: dict[str, Any]) -> None:
    secret = _secret()
    if secret is None:
        return
    entry = {**entry, "mac": _mac(secret, path, entry)}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(entry), mode=0o600)  # a concurrent reader sees the old entry or the new one
    except OSError as e:  # a read-only or full cache only costs the next run its start-up
        logger.warning("Cannot write the architecture cache entry %s (%s): every soup of this architecture builds "
                       "it again. Set HF_SOUPS_CACHE to a writable folder (or HF_SOUPS_ARCH_CACHE=0).", path, e)


def expected_architecture(config: Mapping[str, Any]) -> ExpectedArchitecture | None:
    """What the config's model expects, from the cache or built on the meta device.

    Returns `None` when the architecture is not a transformers class (remote code is never imported here; cached,
    as that depends only on the key) or cannot be built (not cached: a missing optional dependency may be installed).
    """
    path = _cache_path(config)
    if path:
        found, cached = _read_cache(path)
        if not found:
            _wait_for_helper(path)  # a helper started by `prefetch` may be writing this very entry
            found, cached = _read_cache(path)
        if found:
            return cached
    built = _build(config)
    if path and built is not None:
        _write_cache(path, built.to_json())
    elif path and _model_class(config) is None:
        unknown = str((config.get("architectures") or ["?"])[0])
        _write_cache(path, {"format": _CACHE_FORMAT, "unknown_class": unknown})
    return built


def _ignored(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"({p})" for p in patterns)) if patterns else None


def architecture_problems(name: str, config: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> list[Problem]:
    """Compare a checkpoint's tensors (from headers) with what its own config's model expects.

    Returns:
        `list[Problem]`: errors for tensors the model does not know (e.g. renamed), expected tensors that are missing
        (tied weights stored once are fine) and shape mismatches; a warning when the model cannot be built.
    """
    arch = expected_architecture(config)
    if arch is None:
        return [Problem(name, "architecture", f"could not instantiate {config.get('architectures')} from its config "
                        "on the meta device; the checkpoint was not checked against it.",
                        "none needed if the checkpoint loads with from_pretrained.", "warning")]
    expected = arch.shapes
    legacy_buffers = tuple(p for p in constants.LEGACY_BUFFER_PATTERNS
                           if p != constants.LEGACY_POSITION_IDS or arch.has_position_ids)
    skip_unexpected = _ignored(tuple(sorted(set(arch.ignore_unexpected) | set(legacy_buffers))))
    skip_missing = _ignored(arch.ignore_missing)
    have = {constants.modern_name(n): info for n, info in tensors.items()}
    prefix = ""
    if expected and not (set(have) & set(expected)):
        # a base-model checkpoint (no prefix) or the reverse: align on the shared suffix
        first = next(iter(expected))
        prefix = first.split(".", 1)[0] + "." if "." in first else ""
        have = {prefix + n: info for n, info in have.items()}
    problems = []
    unexpected = sorted(n for n in have if n not in expected and n not in arch.model_names
                        and not (skip_unexpected and skip_unexpected.search(n)))
    missing = sorted(n for n in expected if n not in have and not (skip_missing and skip_missing.search(n))
                     and not any(n in g and any(o in have for o in g) for g in arch.tied))
    if unexpected:
        problems.append(Problem(name, "architecture", f"{len(unexpected)} tensor(s) unknown to "
                                f"{config.get('architectures', ['?'])[0]}: {unexpected[:5]} (renamed?).",
                                "re-save the checkpoint with save_pretrained from the matching transformers class."))
    if missing:
        problems.append(Problem(name, "architecture", f"{len(missing)} tensor(s) that "
                                f"{config.get('architectures', ['?'])[0]} needs are missing: {missing[:5]}; "
                                "from_pretrained would initialise them randomly.",
                                "re-save the checkpoint with save_pretrained, or fix its config.json."))
    for n, info in have.items():
        if n in expected and tuple(info.shape) != expected[n]:
            problems.append(Problem(name, f"tensor {n}", f"shape {list(info.shape)} but the config implies "
                                    f"{list(expected[n])}.", "fix config.json or re-export the checkpoint."))
    return problems


def prefetch(config_paths: Sequence[str | os.PathLike[str]]) -> int:
    """Start building, in a helper process, the expected architectures of these `config.json` files that the cache
    lacks; returns how many configs the helper builds (0: all cached, cache off, or nothing readable).

    Called by the CLI before it imports torch: the helper's imports (transformers' modeling code, seconds) then run
    beside the CLI's own. [`expected_architecture`] waits for the helper's entry instead of building it again (and
    builds it itself if the helper wrote none). The files are read like `checkpoint.meta` reads them (regular files,
    not links, size-capped); anything unusual is skipped here and left to the check's own reading. The helper
    receives the configs' contents, never a path, runs without the working directory on its import path, and is
    stopped if this process exits first (on Linux also when it is killed). No helper starts when the cache folder
    cannot be written.
    """
    if not sys.executable or getattr(sys, "frozen", False):  # no Python to start (embedded or frozen app)
        return 0
    todo: dict[str, dict[str, Any]] = {}
    for config_path in config_paths:
        config = _read_json_object(os.fspath(config_path), _MAX_CONFIG_FILE)
        if config is None or not config.get("architectures"):
            continue
        path = _cache_path(config)
        if path is None:
            return 0
        if not os.path.exists(path):
            todo.setdefault(path, config)
    if todo and not _writable(os.path.dirname(next(iter(todo)))):
        return 0  # the helper's entry could not be kept: the check builds in-process (and says why)
    with _pending_lock:  # reserve the paths: a concurrent prefetch of the same architecture starts no second helper
        todo = {path: config for path, config in todo.items() if path not in _pending}
        if not todo:
            return 0
        proc = _start_helper(list(todo.values()))
        if proc is None:
            return 0
        for path in todo:
            _pending[path] = proc
    return len(todo)


def _writable(folder: str) -> bool:
    """Whether `folder` (or the nearest existing folder above it, where it would be created) can be written."""
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.access(folder, os.W_OK | os.X_OK)


def _start_helper(configs: list[dict[str, Any]]) -> subprocess.Popen | None:
    command = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c",
               "import sys; sys.path.pop(0); from hf_soups.architecture import _helper_process; _helper_process()",
               str(os.getpid())]
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True)
    except (OSError, ValueError, TypeError) as e:  # no helper: the check builds in-process, as without the CLI
        logger.debug("architecture prefetch not started: %s", e)
        return None
    try:
        if proc.stdin is None:  # started with stdin=PIPE: never None
            raise OSError("the architecture helper has no stdin")
        proc.stdin.write(json.dumps(configs).encode())
        proc.stdin.close()
    except OSError as e:  # the helper died at once (broken pipe): reap it
        logger.debug("architecture prefetch failed: %s", e)
        _stop(proc)
        return None
    return proc


def _wait_for_helper(path: str) -> None:
    """Wait for the helper building `path`, if any (every thread asking for it waits for the same helper)."""
    with _pending_lock:
        proc = _pending.get(path)
    if proc is None:
        return
    try:
        proc.wait(timeout=_PREFETCH_WAIT_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
    with _pending_lock:
        if _pending.get(path) is proc:
            del _pending[path]


def _stop(proc: subprocess.Popen) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.terminate()  # the helper turns SIGTERM into SystemExit: its temporary cache file is removed
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@atexit.register
def _stop_helpers() -> None:
    with _pending_lock:
        procs = set(_pending.values())
        _pending.clear()
    for proc in procs:
        _stop(proc)


def _helper() -> int:
    """The helper process: build and cache the expected architecture of each config read from stdin."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if sys.platform.startswith("linux"):  # a parent killed outright (SIGKILL, SIGTERM) takes the helper with it
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        except Exception:
            pass
        if len(sys.argv) > 1 and sys.argv[1].isdigit() and os.getppid() != int(sys.argv[1]):
            return 1  # the parent was already gone
    configs = json.loads(sys.stdin.buffer.read())
    built = [expected_architecture(c) is not None for c in configs if isinstance(c, dict)] \
        if isinstance(configs, list) else []
    return 0 if built and all(built) else 1


def _helper_process() -> None:
    """The helper's entry point: [`_helper`], then an immediate `os._exit`.

    The waiting CLI learns the entries are written when this process ends. A normal interpreter exit with torch and
    transformers' modeling code loaded takes over a second on 2 cores (finalising that import graph), all of it on
    the soup's critical path. By then the helper holds nothing but its written entries (each already renamed into
    place), so it skips that teardown. A SIGTERM or an error still exits normally (temporary files are removed).
    """
    code = _helper()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
