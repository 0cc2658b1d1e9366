"""Issue #24 (round 3), the CLI: `@refs` files are read only when they are small regular text files, and a SIGINT at
any point of a run exits 130 with one line saying what was committed (never a traceback, never exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from hf_soups.cli.main import main
from hf_soups.errors import IngredientNotFoundError, InvalidArgumentError
from hf_soups.hub.discovery import REFS_FILE_MAX_BYTES, read_refs
from hf_soups.testing import make_tiny_bert

# ---------------------------------------------------------------------------------------------- @refs files


def _special_refs(tmp_path):
    """name -> (path, what the one-line error must say about it)."""
    fifo = tmp_path / "refs.fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "refs-dir"
    folder.mkdir()
    urandom = tmp_path / "refs-random"
    urandom.symlink_to("/dev/urandom")
    big = tmp_path / "big.txt"
    big.write_text("user/model\n" * (REFS_FILE_MAX_BYTES // 11 + 1))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"user/model\n\xff\xfe\x00garbage\n")
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"user/model\x00\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing but comments\n\n   \n")
    nested = tmp_path / "nested.txt"
    nested.write_text(f"user/model\n@{empty}\n")
    return {
        "dev-zero": ("/dev/zero", "character device"),
        "fifo": (str(fifo), "FIFO"),
        "directory": (str(folder), "directory"),
        "symlink-to-urandom": (str(urandom), "character device"),
        "over-the-cap": (str(big), f"larger than {REFS_FILE_MAX_BYTES} bytes"),
        "invalid-utf8": (str(binary), "not UTF-8 text (byte 0xff at offset 11)"),
        "nul-byte": (str(nul), "NUL byte at offset 10"),
        "empty": (str(empty), "lists no ingredient"),
        "only-comments": (str(comments), "lists no ingredient"),
        "nested-refs-file": (str(nested), "names another refs file on line 2"),
    }


CASES = ["dev-zero", "fifo", "directory", "symlink-to-urandom", "over-the-cap", "invalid-utf8", "nul-byte", "empty",
         "only-comments", "nested-refs-file"]


@pytest.mark.parametrize("case", CASES)
def test_read_refs_refuses_what_is_not_a_small_text_file(tmp_path, case):
    path, says = _special_refs(tmp_path)[case]
    start = time.monotonic()
    with pytest.raises(InvalidArgumentError) as info:
        read_refs(path)
    assert time.monotonic() - start < 5  # /dev/zero and the FIFO are never read
    assert says in str(info.value) and path in str(info.value) and "refs file" in str(info.value)
    assert "Fix:" in str(info.value)


@pytest.mark.parametrize("case", CASES)
def test_cli_at_refs_is_one_line_and_exit_2(tmp_path, capsys, case):
    path, says = _special_refs(tmp_path)[case]
    assert main(["check", f"@{path}", "user/other"]) == 2  # invalid input: never 1 ("incompatible")
    err = capsys.readouterr().err
    assert err.startswith("hf-soups: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert says in err and path in err and "Fix:" in err


def test_read_refs_reads_what_write_refs_writes_with_a_bom_crlf_and_comments(tmp_path):
    path = tmp_path / "refs.txt"
    path.write_bytes("\ufeff# header\r\nuser/a@0123abc  # pinned\r\n\r\nuser/b\r\n".encode())
    assert read_refs(path) == ["user/a@0123abc", "user/b"]
    link = tmp_path / "link.txt"  # a symlink to a regular file is fine: the user named it
    link.symlink_to(path)
    assert read_refs(link) == ["user/a@0123abc", "user/b"]
    with pytest.raises(IngredientNotFoundError):
        read_refs(tmp_path / "missing.txt")


def test_cli_at_alone_and_write_refs_into_a_directory_are_usage_errors(tmp_path, capsys):
    assert main(["check", "@", "user/other"]) == 2
    assert "names no refs file" in capsys.readouterr().err
    folder = tmp_path / "refs-dir"
    folder.mkdir()
    for target, says in ((folder, "names a directory"), (tmp_path / "no" / "refs.txt", "does not exist")):
        # refused before any listing is requested (no Hub is running here: a request would fail with exit 9)
        assert main(["find", "--author", "someone", "--write-refs", str(target)]) == 2
        err = capsys.readouterr().err
        assert says in err and "--write-refs" in err and err.count("\n") == 1
    assert os.listdir(folder) == []


# ---------------------------------------------------------------------------------------------- SIGINT

#: Runs the real `hf-soups` entry point (`main()` without argv, as the console script does) with one function
#: wrapped to announce a pause and sleep, so that the test's SIGINT, sent from outside, lands exactly there.
_PAUSER = r"""
import atexit, importlib, sys, time
targets, *argv = sys.argv[1:]

def pause():
    sys.stderr.write("HF-SOUPS-TEST-PAUSED\n")
    sys.stderr.flush()
    time.sleep(60)

def wrap(target, when):
    module, _, path = target.partition(":")
    owner = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if when == "before":
            pause()
        result = original(*args, **kwargs)
        if when == "after":
            pause()
        return result

    setattr(owner, name, wrapped)

for spec in targets.split(","):
    target, _, when = spec.partition("@")
    if target == "atexit":  # registered first, so it runs last: after main() returned and threads were joined
        atexit.register(pause)
    else:
        wrap(target, when)

sys.argv = ["hf-soups", *argv]
from hf_soups.cli.main import main
sys.exit(main())
"""


def _interrupt(targets, *argv, signals=1, env=None):
    """Run the CLI with pauses at `targets` ("module:function@before|after", comma-separated, or "atexit"); send
    one SIGINT at each of the first `signals` pauses. Returns (exit code, stdout, stderr without the pauses)."""
    proc = subprocess.Popen([sys.executable, "-c", _PAUSER, targets, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_SOUPS_NUM_THREADS": "1", **(env or {})})
    err, pauses = [], threading.Semaphore(0)

    def drain():
        for line in proc.stderr:
            err.append(line)
            if "HF-SOUPS-TEST-PAUSED" in line:
                pauses.release()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for _ in range(signals):
            assert pauses.acquire(timeout=120), "the CLI never reached " + targets + "".join(err)
            proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    return code, out, "".join(line for line in err if "HF-SOUPS-TEST-PAUSED" not in line)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigint")
    return [make_tiny_bert(root / "a", seed=0), make_tiny_bert(root / "b", seed=1)]


def _lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("hf-soups: interrupted")]


def _leftovers(parent):
    return sorted(n for n in os.listdir(parent) if ".hf-soups-" in n)


def _assert_interrupted(code, stderr, says):
    assert code == 130, (code, stderr)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert len(_lines(stderr)) == 1, stderr
    assert says in _lines(stderr)[0], stderr


@pytest.mark.parametrize("target", ["hf_soups.cli.main:build_parser@before",
                                    "hf_soups.merge.engine:_merge_and_write@before"],
                         ids=["before-any-work", "during-the-merge"])
def test_sigint_before_the_commit_says_nothing_was_written(two, tmp_path, target):
    out = tmp_path / "soup"
    code, _, err = _interrupt(target, "soup", *two, "--output", out, "--push-to", "alice/x")
    _assert_interrupted(code, err, "interrupted: nothing was written")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_sigint_right_after_the_commit_names_the_soup_and_that_nothing_was_pushed(two, tmp_path):
    out = tmp_path / "soup"
    code, stdout, err = _interrupt("hf_soups.checkpoint.atomic:AtomicDirectory._commit@after", "soup", *two,
                                   "--output", out, "--push-to", "alice/x")
    _assert_interrupted(code, err, f"interrupted after the soup was written to {out}; nothing was pushed")
    assert (out / ".hf_soups").is_file() and (out / "model.safetensors").is_file()
    assert "Pushed" not in stdout


def test_sigint_at_interpreter_exit_after_success_exits_130_not_0(two, tmp_path):
    out = tmp_path / "soup"
    code, stdout, err = _interrupt("atexit", "soup", *two, "--output", out)
    _assert_interrupted(code, err, f"interrupted after the soup was written to {out}")
    assert "Soup written to" in stdout and (out / ".hf_soups").is_file()


def test_a_second_sigint_while_the_first_unwinds_still_prints_one_line(two, tmp_path):
    out = tmp_path / "soup"  # the first SIGINT lands in the merge; the second in the clean-up it starts
    code, _, err = _interrupt("hf_soups.merge.engine:_merge_and_write@before,"
                              "hf_soups.checkpoint.atomic:AtomicDirectory._release@before",
                              "soup", *two, "--output", out, signals=2)
    _assert_interrupted(code, err, "interrupted: nothing was written")
    assert not out.exists()


def test_sigint_while_pushing_says_the_push_may_be_incomplete(two):
    code, _, err = _interrupt("hf_soups.hub:push_folder@before", "push", two[0], "alice/soup")
    _assert_interrupted(code, err, f"the push of {two[0]} to alice/soup was cut short")
    assert f"hf-soups push {two[0]} alice/soup" in err


def test_sigint_when_sigint_is_ignored_by_the_parent_stays_ignored(two, tmp_path):
    out = tmp_path / "soup"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSER, "hf_soups.merge.engine:_merge_and_write@after",
                             "soup", *two, "--output", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_SOUPS_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        line = ""
        while "HF-SOUPS-TEST-PAUSED" not in line:
            line = proc.stderr.readline()
            assert line, "the CLI ended before the merge"
        proc.send_signal(signal.SIGINT)  # nohup-style: ignored, the run goes on (the pause ends after 60 s)
        time.sleep(1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(30)
