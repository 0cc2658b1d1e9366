"""The architecture check's cache: the next soup of an architecture skips importing transformers' modeling code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_soups import check_compatibility, soup_from_hub
from hf_soups.architecture import _build, expected_architecture
from hf_soups import MergeOptions
from hf_soups.testing import make_tiny_bert, perturb_checkpoint

QUIET = MergeOptions(progress=False)


def _cache_files(root):
    folder = os.path.join(root, "architectures")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _pair(tmp_path):
    base = make_tiny_bert(tmp_path / "base", seed=0)
    return [perturb_checkpoint(base, tmp_path / f"ft{i}", seed=i) for i in (1, 2)]


def test_cached_expectation_equals_the_meta_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, _ = _pair(tmp_path)
    with open(os.path.join(a, "config.json")) as f:
        config = json.load(f)
    first = expected_architecture(config)
    (entry,) = _cache_files(tmp_path / "cache")
    monkeypatch.setattr("hf_soups.architecture._build", lambda config: (_ for _ in ()).throw(AssertionError("built")))
    again = expected_architecture(config)  # read back from the file, not built
    assert again == first == _build(config)
    # the truth: the names and shapes save_pretrained writes for the config's model
    assert again.shapes == {n: tuple(t.shape) for n, t in load_file(os.path.join(a, "model.safetensors")).items()}


def test_warm_cache_still_catches_a_renamed_tensor(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, b = _pair(tmp_path)
    assert check_compatibility([a, b]).compatible  # fills the cache
    assert len(_cache_files(tmp_path / "cache")) == 1
    for d in (a, b):
        t = load_file(os.path.join(d, "model.safetensors"))
        t["classifier.kernel"] = t.pop("classifier.weight")
        save_file(t, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    report = check_compatibility([a, b])
    text = " ".join(p.message for p in report.problems if p.field == "architecture")
    assert not report.compatible and "'classifier.kernel'" in text and "'classifier.weight'" in text


def test_a_corrupt_entry_is_rebuilt_and_the_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, b = _pair(tmp_path)
    check_compatibility([a, b])
    (entry,) = _cache_files(tmp_path / "cache")
    path = tmp_path / "cache" / "architectures" / entry
    path.write_text('{"format": 1, "shapes": {"classifier.weight": [1, 1]}')  # truncated JSON
    assert check_compatibility([a, b]).compatible
    assert json.loads(path.read_text())["shapes"]["classifier.weight"] == [3, 32]  # rewritten whole
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "off"))
    monkeypatch.setenv("HF_SOUPS_ARCH_CACHE", "0")
    assert check_compatibility([a, b]).compatible
    assert not os.path.exists(tmp_path / "off")


_PROBE = textwrap.dedent('''
    import sys
    from hf_soups import soup_from_hub
    from hf_soups import MergeOptions
    soup_from_hub(sys.argv[1:3], output_dir=sys.argv[3], merge_options=MergeOptions(progress=False))
    print("MODELING", "transformers.modeling_utils" in sys.modules)
''')


def test_a_warm_uniform_soup_does_not_import_transformers_modeling(tmp_path):
    a, b = _pair(tmp_path)
    env = {**os.environ, "HF_SOUPS_CACHE": str(tmp_path / "cache")}
    seen = []
    for run in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-c", _PROBE, a, b, str(tmp_path / run)], env=env, check=True,
                             capture_output=True, text=True).stdout
        seen.append(out.split("MODELING ")[1].strip())
        soup = load_file(os.path.join(tmp_path / run, "model.safetensors"))
        ref = {k: torch.stack([load_file(os.path.join(d, "model.safetensors"))[k] for d in (a, b)]).mean(0)
               for k in soup}
        assert all(torch.equal(soup[k], ref[k]) for k in soup)
    assert seen == ["True", "False"]  # the first soup built the meta model; the second read the cache


def _config(directory):
    with open(os.path.join(directory, "config.json")) as f:
        return json.load(f)


@pytest.fixture(autouse=True)
def _no_helper_survives_a_test():
    yield
    from hf_soups import architecture

    architecture._stop_helpers()


def test_prefetch_builds_in_a_helper_process_and_the_check_waits_for_it(tmp_path, monkeypatch):
    """The CLI's head start: the helper process writes the entry; this process reads it and never builds."""
    from hf_soups import architecture

    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, b = _pair(tmp_path)
    assert architecture.prefetch([os.path.join(a, "config.json"), os.path.join(b, "config.json")]) == 1  # one arch
    monkeypatch.setattr(architecture, "_build", lambda config: (_ for _ in ()).throw(AssertionError("built here")))
    got = expected_architecture(_config(a))
    assert got is not None and got.shapes == {n: tuple(t.shape) for n, t in
                                              load_file(os.path.join(a, "model.safetensors")).items()}
    assert len(_cache_files(tmp_path / "cache")) == 1 and not architecture._pending
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 0  # cached now: no second helper


def test_prefetch_skips_links_and_a_failed_helper_falls_back_to_building_here(tmp_path, monkeypatch):
    from hf_soups import architecture

    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, _ = _pair(tmp_path)
    os.symlink(os.path.join(a, "config.json"), tmp_path / "linked.json")
    assert architecture.prefetch([str(tmp_path / "linked.json"), str(tmp_path / "absent.json")]) == 0
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))  # the helper cannot start
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 0
    failing = tmp_path / "failing-python"  # starts, reads the configs, writes nothing, fails
    failing.write_text("#!/bin/sh\ncat > /dev/null\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(failing))
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 1
    assert expected_architecture(_config(a)) == _build(_config(a))  # built in this process instead
    assert len(_cache_files(tmp_path / "cache")) == 1 and not architecture._pending


def _prefetch_then(tmp_path, ending: str) -> tuple[subprocess.CompletedProcess, int]:
    """A process that prefetches one architecture, prints its helper's pid, then runs `ending`."""
    a, _ = _pair(tmp_path)
    probe = textwrap.dedent('''
        import os, signal, sys, time
        from hf_soups import architecture
        assert architecture.prefetch([sys.argv[1]]) == 1
        (proc,) = set(architecture._pending.values())
        print(proc.pid, flush=True)
    ''') + ending
    env = {**os.environ, "HF_SOUPS_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", probe, os.path.join(a, "config.json")], env=env,
                         capture_output=True, text=True, timeout=60)
    return run, int(run.stdout.split()[0])


def test_a_helper_still_running_at_exit_is_stopped(tmp_path):
    run, pid = _prefetch_then(tmp_path, "")  # exits at once, while the helper is still importing transformers
    assert run.returncode == 0, run.stderr
    with pytest.raises(ProcessLookupError):  # stopped and reaped by the exiting process, not orphaned
        os.kill(pid, 0)
    assert _cache_files(tmp_path / "cache") == []


def test_the_helper_ends_once_its_entry_is_written_without_interpreter_teardown(tmp_path, monkeypatch):
    """The CLI waits for the helper's exit: finalising torch and transformers' modeling code (over a second on 2
    cores) must not be part of that wait. The helper, started as `prefetch` starts it, runs a `sitecustomize` that
    marks its start and registers an exit hook: the hook never runs, and the entry is whole."""
    from hf_soups import architecture

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(f'''
        import atexit
        open({str(tmp_path / "started")!r}, "w").close()
        atexit.register(lambda: open({str(tmp_path / "teardown")!r}, "w").close())
    '''))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_SOUPS_ARCH_CACHE", raising=False)
    a, _ = _pair(tmp_path)
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 1
    (proc,) = set(architecture._pending.values())
    assert proc.wait(timeout=120) == 0
    assert (tmp_path / "started").exists()  # the hooks were loaded: the next line can fail
    assert not (tmp_path / "teardown").exists()
    (entry,) = _cache_files(tmp_path / "cache")
    assert not entry.startswith(".")  # renamed into place, no temporary file left
    assert architecture._read_cache(architecture._cache_path(_config(a))) == (True, _build(_config(a)))


def test_cli_soup_leaves_the_cold_build_to_the_helper(tmp_path):
    """`hf-soups soup` on an uncached architecture: the helper builds the expectation, the CLI process itself never
    imports transformers' modeling code, and the soup is the mean."""
    a, b = _pair(tmp_path)
    env = {**os.environ, "HF_SOUPS_CACHE": str(tmp_path / "cache")}
    cli = textwrap.dedent('''
        import sys
        from hf_soups.cli import main
        code = main(["soup", *sys.argv[1:3], "--output", sys.argv[3]])
        print("MODELING", "transformers.modeling_utils" in sys.modules, code)
    ''')
    out = subprocess.run([sys.executable, "-c", cli, a, b, str(tmp_path / "soup")], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    assert out.split("MODELING ")[1].split() == ["False", "0"]
    assert len(_cache_files(tmp_path / "cache")) == 1
    soup = load_file(os.path.join(tmp_path / "soup", "model.safetensors"))
    ref = {k: torch.stack([load_file(os.path.join(d, "model.safetensors"))[k] for d in (a, b)]).mean(0)
           for k in soup}
    assert all(torch.equal(soup[k], ref[k]) for k in soup)


def test_an_unknown_class_is_cached_and_starts_no_second_helper(tmp_path, monkeypatch):
    from hf_soups import architecture

    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, b = _pair(tmp_path)
    for d in (a, b):
        config = _config(d)
        config["architectures"] = ["FooForBar"]  # no such transformers class (remote code is never imported)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
    report = check_compatibility([a, b])
    assert report.compatible and "could not instantiate" in " ".join(p.message for p in report.warnings)
    assert len(_cache_files(tmp_path / "cache")) == 1
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 0  # the answer is cached
    monkeypatch.setattr(architecture, "_build", lambda config: (_ for _ in ()).throw(AssertionError("built")))
    assert expected_architecture(_config(a)) is None


def test_a_fifo_in_place_of_a_cache_entry_is_replaced_not_waited_on(tmp_path, monkeypatch):
    from hf_soups import architecture

    monkeypatch.setenv("HF_SOUPS_CACHE", str(tmp_path / "cache"))
    a, _ = _pair(tmp_path)
    path = architecture._cache_path(_config(a))
    os.makedirs(os.path.dirname(path))
    os.mkfifo(path)
    assert architecture.prefetch([os.path.join(a, "config.json")]) == 0  # something is there: no helper
    assert expected_architecture(_config(a)) == _build(_config(a))  # returns: a FIFO is not read
    assert os.path.isfile(path) and json.load(open(path))["format"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux-only")
def test_a_helper_whose_parent_is_killed_stops_too(tmp_path):
    run, pid = _prefetch_then(tmp_path, textwrap.dedent('''
        time.sleep(0.5)  # the helper is past its start-up checks, importing transformers (seconds)
        os.kill(os.getpid(), signal.SIGKILL)  # no atexit: only the helper's parent-death signal can stop it
    '''))
    assert run.returncode == -9
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited (an orphan's zombie, until its new parent reaps it)
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the helper outlived its killed parent")
    assert _cache_files(tmp_path / "cache") == []  # stopped while importing, before it could write
