"""No user file is ever lost or leaked through the file system (issue #11, file-system half).

Every test uses real files, real symlinks, real FIFOs, real concurrent processes and the real CLI; each asserts the
error class, that the message names the culprit, and that nothing outside the test's temporary output changed (the
ingredient trees, the user's files and any previous output are hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import WRITE_TOKEN, publish, state_dict_of

from hf_soups import (
    CorruptCheckpointError,
    MergeOptions,
    OutputExistsError,
    OutputNotWritableError,
    SoupError,
    UnsafeCheckpointError,
    check_compatibility,
    soup_from_hub,
)
from hf_soups.checkpoint import atomic
from hf_soups.checkpoint.atomic import MARKER, AtomicDirectory

QUIET = MergeOptions(progress=False)
SECRET = "hf_SECRET_token_never_leaves_1234567890"


def tree(path) -> dict[str, str]:
    """A fingerprint of everything under `path`: file hashes, link targets, kinds. Never follows links."""
    out = {}
    path = os.fspath(path)
    if not os.path.lexists(path):
        return {}
    if os.path.islink(path):
        return {".": "link:" + os.readlink(path)}
    for dirpath, dirnames, names in os.walk(path):
        for name in dirnames + names:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = "special"
    return out


def cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "hf_soups", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=timeout)


def leaked(root, needle=SECRET) -> list[str]:
    """Files under `root` whose bytes contain `needle`."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    if needle.encode() in f.read():
                        hits.append(full)
    return hits


@pytest.fixture
def two(family, tmp_path):
    """Two private copies of real fine-tunes (tokenizer files included), safe to tamper with."""
    a = shutil.copytree(family["a"], tmp_path / "ing-a")
    d = shutil.copytree(family["d"], tmp_path / "ing-d")
    return a, d


@pytest.fixture
def secret_file(tmp_path):
    home = tmp_path / "home" / ".cache" / "huggingface"
    home.mkdir(parents=True)
    path = home / "token"
    path.write_text(SECRET)
    return path


# --------------------------------------------------------------------------- reading only inside ingredients
@pytest.mark.parametrize("name", ["special_tokens_map.json", "added_tokens.json", "tokenizer_config.json",
                                  "generation_config.json", "preprocessor_config.json", "vocab.txt", "README.md",
                                  "config.json"])
def test_small_file_linked_outside_is_refused_and_nothing_leaks(two, secret_file, tmp_path, name):
    a, d = two
    if os.path.lexists(a / name):
        os.remove(a / name)
    os.symlink(secret_file, a / name)
    before = {p: tree(p) for p in (a, d, secret_file.parent)}
    out = tmp_path / "soup"
    with pytest.raises(UnsafeCheckpointError) as err:
        soup_from_hub([a, d], output_dir=out, merge_options=QUIET)
    assert name in str(err.value) and str(a) in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(UnsafeCheckpointError, match=name):  # the verdict predicts the soup
        check_compatibility([a, d])
    assert not out.exists()
    assert not [p for p in leaked(tmp_path) if not p.startswith(str(secret_file.parent))]
    assert {p: tree(p) for p in (a, d, secret_file.parent)} == before


def test_proc_environ_link_refused_and_push_never_happens(hub, api, two, tmp_path):
    a, d = two
    os.symlink("/proc/self/environ", a / "added_tokens.json")
    out = tmp_path / "soup"
    proc = cli("soup", a, d, "--output", out, "--push-to", "alice/leaky-soup", "--token", WRITE_TOKEN)
    assert proc.returncode == 5, proc.stderr
    assert "added_tokens.json" in proc.stderr and "environ" in proc.stderr
    assert not out.exists() and not api.repo_exists("alice/leaky-soup")


def test_push_refuses_a_folder_with_a_link_outside(hub, api, family, secret_file, tmp_path):
    soup = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "soup", merge_options=QUIET)
    os.symlink(secret_file, tmp_path / "soup" / "notes.txt")
    with pytest.raises(UnsafeCheckpointError, match="notes.txt"):
        soup.push_to_hub("alice/leaky-push", token=WRITE_TOKEN)
    assert not api.repo_exists("alice/leaky-push")


def _fake_hub_cache(src, cache, repo="models--alice--ft", other_blob=None):
    """Lay out `src` as huggingface_hub does: snapshots/<sha>/<file> -> ../../blobs/<hash>."""
    snap = cache / repo / "snapshots" / ("a" * 40)
    blobs = cache / repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(src):
        data = open(os.path.join(src, name), "rb").read()
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", digest), snap / name)
    return snap


def test_hub_cache_snapshot_links_into_blobs_are_accepted(family, tmp_path):
    snap = _fake_hub_cache(family["a"], tmp_path / "cache")
    soup = soup_from_hub([snap, family["d"]], output_dir=tmp_path / "soup", merge_options=QUIET)
    reference = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "ref", merge_options=QUIET)
    got, want = state_dict_of(soup.output_dir), state_dict_of(reference.output_dir)
    assert all(torch.equal(got[k], want[k]) for k in want)
    for name in os.listdir(soup.output_dir):  # copied as real files, never as links into the cache
        assert not os.path.islink(os.path.join(soup.output_dir, name))
    assert tree(os.path.join(soup.output_dir, "vocab.txt")) == tree(os.path.join(family["a"], "vocab.txt"))


def test_hub_cache_snapshot_link_into_another_repo_is_refused(family, secret_file, tmp_path):
    snap = _fake_hub_cache(family["a"], tmp_path / "cache")
    other = tmp_path / "cache" / "models--mallory--x" / "blobs"
    other.mkdir(parents=True)
    (other / "abc").write_text(SECRET)
    os.remove(snap / "tokenizer_config.json")
    os.symlink(os.path.join("..", "..", "..", "models--mallory--x", "blobs", "abc"), snap / "tokenizer_config.json")
    with pytest.raises(UnsafeCheckpointError, match="tokenizer_config.json"):
        soup_from_hub([snap, family["d"]], output_dir=tmp_path / "soup", merge_options=QUIET)
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize("what", ["index", "shard", "config", "tokenizer"])
def test_fifo_is_refused_without_hanging(two, tmp_path, what):
    a, d = two
    name = {"index": "model.safetensors.index.json", "config": "config.json", "tokenizer": "tokenizer.json",
            "shard": sorted(f for f in os.listdir(a) if f.endswith(".safetensors"))[0]}[what]
    os.remove(a / name)
    os.mkfifo(a / name)
    before = tree(a)
    start = time.monotonic()
    proc = cli("check", a, d, timeout=120)  # a FIFO would block open() forever
    assert proc.returncode == 5, proc.stderr
    assert name in proc.stderr and "FIFO" in proc.stderr
    with pytest.raises(UnsafeCheckpointError, match="FIFO"):
        soup_from_hub([a, d], output_dir=tmp_path / "soup", merge_options=QUIET)
    assert time.monotonic() - start < 100 and tree(a) == before and not (tmp_path / "soup").exists()


def test_shard_that_is_a_directory_is_not_reported_missing(two, tmp_path):
    a, d = two
    shard = sorted(f for f in os.listdir(a) if f.endswith(".safetensors"))[0]
    os.remove(a / shard)
    (a / shard).mkdir()
    with pytest.raises(CorruptCheckpointError) as err:
        soup_from_hub([a, d], output_dir=tmp_path / "soup", merge_options=QUIET)
    assert shard in str(err.value) and "directory, not a regular file" in str(err.value)
    assert "missing" not in str(err.value)


# --------------------------------------------------------------------------- overwrite replaces only a soup
def test_cli_overwrite_of_the_current_directory_refuses_and_keeps_user_files(family, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    (work / ".env").write_text("API_KEY=" + SECRET)
    (work / "notes.md").write_text("mine")
    before = tree(work)
    proc = cli("soup", family["a"], family["d"], "--output", ".", "--overwrite", cwd=work)
    assert proc.returncode == 6, proc.stderr
    assert "current working directory" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(work) == before


@pytest.mark.parametrize("where", ["ingredient", "parent of ingredients", "inside an ingredient", "hf home",
                                   "hub cache", "home", "parent of home", "user directory"])
def test_overwrite_never_replaces_what_hf_soups_did_not_write(family, tmp_path, monkeypatch, where):
    a = shutil.copytree(family["a"], tmp_path / "ings" / "a")
    d = shutil.copytree(family["d"], tmp_path / "ings" / "d")
    home = tmp_path / "env" / "home"
    (home / "docs").mkdir(parents=True)
    (home / ".bashrc").write_text("export PATH")
    hf_home = tmp_path / "hf-home"
    (hf_home / "hub" / "models--x--y").mkdir(parents=True)
    (hf_home / "token").write_text(SECRET)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    (a / "sub").mkdir()
    (a / "sub" / "x.txt").write_text("x")
    user = tmp_path / "user-dir"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    target, culprit = {
        "ingredient": (a, "the ingredient"), "parent of ingredients": (tmp_path / "ings", "parent of the ingredient"),
        "inside an ingredient": (a / "sub", "inside the ingredient"), "hf home": (hf_home, "Hugging Face cache"),
        "hub cache": (hf_home / "hub", "Hugging Face cache"), "home": (home, "home directory"),
        "parent of home": (tmp_path / "env", "parent of your home directory"), "user directory": (user, "thesis.tex"),
    }[where]
    before = {p: tree(p) for p in (a, d, home, hf_home, user)}
    with pytest.raises(OutputExistsError) as err:
        soup_from_hub([a, d], output_dir=target, overwrite=True, merge_options=QUIET)
    assert culprit in str(err.value) and str(target) in str(err.value) and "Fix:" in str(err.value)
    assert {p: tree(p) for p in (a, d, home, hf_home, user)} == before


def test_overwrite_replaces_a_soup_but_not_files_added_to_it(family, tmp_path):
    out = tmp_path / "soup"
    soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=QUIET)
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "hf_soups" and "model.safetensors" in marker["files"]
    (out / "my-eval.txt").write_text("mine")
    before = tree(out)
    with pytest.raises(OutputExistsError, match="my-eval.txt"):
        soup_from_hub([family["a"], family["c"]], output_dir=out, overwrite=True, merge_options=QUIET)
    assert tree(out) == before
    (out / "my-eval.txt").unlink()
    soup_from_hub([family["a"], family["c"]], output_dir=out, overwrite=True, merge_options=QUIET)
    assert json.loads((out / MARKER).read_text())["id"] != marker["id"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".soup")]  # nothing hidden left behind


def test_overwrite_recognises_a_soup_written_before_markers(family, tmp_path):
    out = tmp_path / "soup"
    soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=QUIET)
    (out / MARKER).unlink()
    soup_from_hub([family["a"], family["c"]], output_dir=out, overwrite=True, merge_options=QUIET)
    assert (out / MARKER).exists()
    (out / MARKER).unlink()
    (out / "README.md").write_text("# my own model\n")  # no hf_soups recipe in the card: not recognised
    before = tree(out)
    with pytest.raises(OutputExistsError, match="did not write"):
        soup_from_hub([family["a"], family["d"]], output_dir=out, overwrite=True, merge_options=QUIET)
    assert tree(out) == before


def test_symlinked_output_dir_is_refused(family, tmp_path):
    real = tmp_path / "real"
    soup_from_hub([family["a"], family["d"]], output_dir=real, merge_options=QUIET)
    link = tmp_path / "link"
    os.symlink(real, link)
    before = tree(tmp_path)
    with pytest.raises(OutputExistsError, match="symbolic link"):
        soup_from_hub([family["a"], family["d"]], output_dir=link, overwrite=True, merge_options=QUIET)
    assert tree(tmp_path) == before and os.path.islink(link)


# --------------------------------------------------------------------------- the commit is atomic and conditional
_RACE = textwrap.dedent("""
    import os, sys, time
    from hf_soups.checkpoint import writer
    original = writer.ShardedSafetensorsWriter.write
    state = {"n": 0}
    def gated(self, name, tensor, *args):
        original(self, name, tensor, *args)
        state["n"] += 1
        if state["n"] == 1:
            print("WROTE", flush=True)
            while not os.path.exists(sys.argv[1]):
                time.sleep(0.05)
    writer.ShardedSafetensorsWriter.write = gated
    from hf_soups.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def test_two_concurrent_soups_to_one_output_exactly_one_wins(family, tmp_path):
    out, go = tmp_path / "o", tmp_path / "go"
    ingredients = {k: tree(family[k]) for k in ("a", "c", "d")}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(go), "soup", family["a"], ing, "--output", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for ing in (family["d"], family["c"])]
    for p in procs:  # both are mid-merge, both checked an absent output
        assert p.stdout.readline().startswith("WROTE")
    go.touch()
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 6], results
    loser = next(r for r in results if r[0] == 6)
    assert "changed while the soup was being made" in loser[2] and str(out) in loser[2]
    kept = [n for n in os.listdir(tmp_path) if n.startswith("o.hf-soups-new-")]
    assert len(kept) == 1 and kept[0] in loser[2]
    winner_ing = family["d"] if results[0][0] == 0 else family["c"]
    want = state_dict_of(soup_from_hub([family["a"], winner_ing], output_dir=tmp_path / "check",
                                       merge_options=QUIET).output_dir)
    got = state_dict_of(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert state_dict_of(tmp_path / kept[0]).keys() == want.keys()  # the loser's soup is complete, just aside
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".o.")]
    assert {k: tree(family[k]) for k in ("a", "c", "d")} == ingredients


@pytest.mark.parametrize("existing", ["absent", "empty", "soup"])
def test_a_file_appearing_in_the_output_during_the_run_survives(family, tmp_path, monkeypatch, existing):
    from hf_soups.checkpoint import writer

    out = tmp_path / "soup"
    if existing == "empty":
        out.mkdir()
    elif existing == "soup":
        soup_from_hub([family["a"], family["c"]], output_dir=out, merge_options=QUIET)
    original = writer.ShardedSafetensorsWriter.write

    def meddle(self, name, tensor, *args):
        original(self, name, tensor, *args)
        if not (out / "user.txt").exists():
            out.mkdir(exist_ok=True)
            (out / "user.txt").write_text("written during the run")

    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "write", meddle)
    previous = tree(out)
    ingredients = {k: tree(family[k]) for k in ("a", "d")}
    with pytest.raises(OutputExistsError) as err:
        soup_from_hub([family["a"], family["d"]], output_dir=out, overwrite=existing == "soup", merge_options=QUIET)
    assert "changed while" in str(err.value) and "hf-soups-new-" in str(err.value)
    assert (out / "user.txt").read_text() == "written during the run"
    assert {k: tree(family[k]) for k in ("a", "d")} == ingredients
    assert {n: h for n, h in tree(out).items() if n != "user.txt"} == previous  # the previous soup is untouched too
    kept = [n for n in os.listdir(tmp_path) if n.startswith("soup.hf-soups-new-")]
    assert len(kept) == 1 and (tmp_path / kept[0] / "model.safetensors").exists()


def test_overwrite_commit_without_rename_exchange_is_recovered_after_an_interruption(family, tmp_path, monkeypatch):
    out = tmp_path / "soup"
    soup_from_hub([family["a"], family["c"]], output_dir=out, merge_options=QUIET)
    previous = tree(out)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # e.g. NFS: two renames instead of one swap
    real_rename = os.rename
    calls = []

    def interrupted(src, dst):
        calls.append((src, dst))
        if os.fspath(src).startswith(str(tmp_path / ".soup.hf-soups-tmp-")):
            raise KeyboardInterrupt  # killed between moving the old soup aside and moving the new one in
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        soup_from_hub([family["a"], family["d"]], output_dir=out, overwrite=True, merge_options=QUIET)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists() and [n for n in os.listdir(tmp_path) if ".hf-soups-old-" in n]
    with pytest.raises(OutputExistsError, match="already holds a soup"):  # the next run puts it back first
        soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=QUIET)
    assert tree(out) == previous
    soup_from_hub([family["a"], family["d"]], output_dir=out, overwrite=True, merge_options=QUIET)
    assert tree(out) != previous and not [n for n in os.listdir(tmp_path) if n.startswith(".soup")]


_HOLD = textwrap.dedent("""
    import sys, time
    from hf_soups.checkpoint.atomic import AtomicDirectory
    with AtomicDirectory(sys.argv[1]) as tmp:
        open(tmp + "/partial.safetensors", "wb").write(b"x" * 100)
        print(tmp, flush=True)
        time.sleep(600)
""")


def test_stale_temporary_of_a_dead_run_is_removed_but_a_live_one_is_kept(family, tmp_path):
    out = tmp_path / "soup"
    live = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        live_tmp = live.stdout.readline().strip()
        dead = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ))
        dead_tmp = dead.stdout.readline().strip()
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        foreign = tmp_path / ".soup.hf-soups-tmp-0123456789ab-42-deadbeef"  # a run on another machine (same volume)
        foreign.mkdir()
        (foreign / "partial.safetensors").write_bytes(b"y")
        assert os.path.isdir(dead_tmp) and os.path.isdir(live_tmp)
        soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=QUIET)
        assert not os.path.exists(dead_tmp)  # provably dead: its lock could be taken
        assert os.path.isfile(os.path.join(live_tmp, "partial.safetensors"))  # alive: holds its flock
        assert tree(foreign) == {"partial.safetensors": hashlib.sha256(b"y").hexdigest()}  # unknown host: kept
    finally:
        live.kill()
        live.wait()


# --------------------------------------------------------------------------- writability, before any download
@pytest.fixture(params=["tmpfs", "bind mount of the same file system"])
def mount_point(tmp_path, request):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "src").mkdir()
    how = ["-t", "tmpfs", "-o", "size=4m", "tmpfs"] if request.param == "tmpfs" else ["--bind", str(tmp_path / "src")]
    done = subprocess.run(["mount", *how, str(mnt)], capture_output=True)
    if done.returncode == 0:
        yield mnt
        subprocess.run(["umount", str(mnt)], check=False)
    else:  # not root: a mount point every Linux system has
        yield next(p for p in ("/dev/shm", "/proc", "/sys") if os.path.ismount(p))


def test_mount_point_output_is_refused_before_any_download(hub, mount_point, tmp_path):
    with pytest.raises(OutputNotWritableError) as err:  # an unknown repo: the output is checked first
        soup_from_hub(["alice/not-there-1", "alice/not-there-2"], output_dir=mount_point, merge_options=QUIET)
    assert "mount point" in str(err.value) and str(mount_point) in str(err.value)
    assert isinstance(err.value, PermissionError) and isinstance(err.value, SoupError)


def test_read_only_output_location_is_refused_before_any_download(hub, family, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True).returncode == 0
    if not mounted:
        os.chmod(ro, 0o555)
        if os.access(ro, os.W_OK):  # root without mount rights: /proc refuses new files for everyone
            ro = "/proc"
    try:
        with pytest.raises(OutputNotWritableError) as err:
            soup_from_hub(["alice/not-there-1", "alice/not-there-2"], output_dir=os.path.join(ro, "soup"),
                          merge_options=QUIET)
        assert str(ro) in str(err.value) and "Fix:" in str(err.value)
        proc = cli("soup", family["a"], family["d"], "--output", os.path.join(ro, "soup"))
        assert proc.returncode == 6 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)], check=False)


def test_raw_os_errors_never_exit_with_the_incompatible_code(monkeypatch, capsys):
    import importlib

    cli_main = importlib.import_module("hf_soups.cli.main")

    def boom(args):
        raise PermissionError(13, "Permission denied", "/somewhere/eval.csv")

    monkeypatch.setitem(cli_main._COMMANDS, "check", boom)
    assert cli_main.main(["check", "x/y"]) == 10
    assert "/somewhere/eval.csv" in capsys.readouterr().err


def test_atomic_directory_protects_the_cache_dir_argument(tmp_path):
    cache = tmp_path / "my-cache"
    (cache / "models--a--b").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="Hugging Face cache"):
        AtomicDirectory(cache, overwrite=True, caches=[str(cache)])


@pytest.mark.parametrize("where", ["new directory inside an ingredient", "new directory inside the hub cache"])
def test_a_new_output_directory_inside_an_ingredient_or_the_cache_is_refused(family, tmp_path, monkeypatch, where):
    a = shutil.copytree(family["a"], tmp_path / "ings" / "a")
    d = shutil.copytree(family["d"], tmp_path / "ings" / "d")
    hub_cache = tmp_path / "hf-home" / "hub"
    hub_cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    target, culprit = {"new directory inside an ingredient": (a / "soup", "inside the ingredient"),
                       "new directory inside the hub cache": (hub_cache / "models--me--soup", "Hugging Face cache")}[where]
    before = {p: tree(p) for p in (a, d, hub_cache)}
    with pytest.raises(OutputExistsError) as err:
        soup_from_hub([a, d], output_dir=target, merge_options=QUIET)
    assert culprit in str(err.value) and str(target) in str(err.value) and "Fix:" in str(err.value)
    assert {p: tree(p) for p in (a, d, hub_cache)} == before and not target.exists()


@pytest.mark.parametrize("listed", [["thesis.tex"], ["thesis.tex", "config.json"], ["notes"]])
def test_a_copied_or_crafted_marker_naming_user_files_never_lets_overwrite_delete_them(family, tmp_path, listed):
    user = tmp_path / "user-dir"
    user.mkdir()
    for name in listed:  # the marker lists every entry: only its names can tell it is not a soup
        if name == "notes":
            (user / "notes").mkdir()
            (user / "notes" / "n.txt").write_text("more work")
        else:
            (user / name).write_text("years of work")
    (user / MARKER).write_text(json.dumps({"written_by": "hf_soups", "id": "x", "files": listed}))
    before = tree(user)
    with pytest.raises(OutputExistsError) as err:
        soup_from_hub([family["a"], family["d"]], output_dir=user, overwrite=True, merge_options=QUIET)
    assert "did not write" in str(err.value) and listed[0] in str(err.value) and "Fix:" in str(err.value)
    assert tree(user) == before
