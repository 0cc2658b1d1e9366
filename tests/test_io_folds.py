"""The I/O folds of #23: one size parser, one id2label conversion, one atomic file write, one checkpoint layout,
and a verdict module free of torch."""

from __future__ import annotations

import pytest

from hf_soups.errors import InvalidArgumentError, LabelMismatchError

# --------------------------------------------------------------------------------------------- the one size parser
# huggingface_hub's `max_shard_size` convention: decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB.
SIZES = [
    ("5GB", 5 * 10**9),
    ("5GiB", 5 * 2**30),
    ("500MB", 500 * 10**6),
    ("40MiB", 40 * 2**20),
    ("1.5GB", 1_500_000_000),
    ("2 kib", 2048),
    ("1TB", 10**12),
    (" 1000 ", 1000),
    (10**9, 10**9),
    (1, 1),
]
BAD_SIZES = ["", "GB", "5XB", "5B", "-5GB", "0", "0GB", 0, -1, True, 1.5, None, "1e3GB", "5 G B", "9" * 400 + "TB"]


@pytest.mark.parametrize("size,expected", SIZES)
def test_parse_size_table(size, expected):
    from hf_soups.checkpoint import parse_size as writer_parse_size
    from hf_soups.validation import parse_size, validate_max_shard_size

    assert parse_size(size) == expected
    # the writer and the API's argument check are the same function: they cannot disagree
    assert writer_parse_size is parse_size and validate_max_shard_size is parse_size


@pytest.mark.parametrize("size", BAD_SIZES)
def test_parse_size_refuses_bad_input(size):
    from hf_soups.validation import parse_size

    with pytest.raises(InvalidArgumentError, match=r"^max_shard_size: .*Fix: pass a positive size") as info:
        parse_size(size)
    assert len(str(info.value)) < 600


def test_parse_size_names_the_parameter():
    from hf_soups.validation import parse_size

    with pytest.raises(InvalidArgumentError, match="^--max-shard-size: cannot read '5XB'"):
        parse_size("5XB", parameter="--max-shard-size")


def test_writer_refuses_bad_size_as_the_api_does(tmp_path):
    import torch

    from hf_soups.checkpoint import ShardedSafetensorsWriter

    plan = [("w", torch.float32, (2,))]
    with pytest.raises(InvalidArgumentError, match="'5GiBs'"):
        ShardedSafetensorsWriter(str(tmp_path), plan, "5GiBs")
    # a binary unit the API's check refused before the fold: the writer and the check agree on it now
    assert [f for f, _ in ShardedSafetensorsWriter(str(tmp_path), plan, "1GiB").files] == ["model.safetensors"]


# ------------------------------------------------------------------------------------ id2label int keys, once
@pytest.mark.parametrize("config,expected", [
    ({"id2label": {"0": "neg", "1": "pos"}}, {0: "neg", 1: "pos"}),
    ({"id2label": {"1": "b", "0": "a", "2": 3}}, {0: "a", 1: "b", 2: "3"}),
    ({"id2label": {0: "x"}}, {0: "x"}),
    ({"id2label": {"zero": "x"}}, None),
    ({"id2label": ["a", "b"]}, None),
    ({}, None),
])
def test_normalize_id2label(config, expected):
    from hf_soups import compat
    from hf_soups.checkpoint.meta import normalize_id2label

    assert compat.normalize_id2label is normalize_id2label
    assert normalize_id2label(config) == expected


def test_model_id2label_uses_the_one_conversion():
    from hf_soups.evaluation.data import model_id2label

    assert model_id2label({"id2label": {"1": "pos", "0": "neg"}}) == {0: "neg", 1: "pos"}
    assert model_id2label({"num_labels": 3}) == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    # a malformed label map is a named error, not a bare ValueError from int()
    with pytest.raises(LabelMismatchError, match="id2label must map integer ids"):
        model_id2label({"id2label": {"neg": "0"}})


def test_id2label_int_conversion_is_written_once():
    import pathlib

    import hf_soups

    root = pathlib.Path(hf_soups.__file__).parent
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py") if "int(k)" in p.read_text(encoding="utf-8")]
    assert hits == ["checkpoint/meta.py"]


# ------------------------------------------------------------------------------------- the one atomic file write
def test_write_atomic_replaces_in_one_step_and_leaves_no_temporary(tmp_path):
    import os

    from hf_soups.atomic_file import write_atomic

    path = tmp_path / "f.txt"
    assert write_atomic(path, "one") and path.read_text() == "one"
    inode = os.stat(path).st_ino
    assert write_atomic(path, b"two\xff") and path.read_bytes() == b"two\xff"
    assert os.stat(path).st_ino != inode  # a new file took the name: a reader of the old one never saw a mix
    assert os.listdir(tmp_path) == ["f.txt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as `open()` would create it
    write_atomic(path, "secret", mode=0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_write_atomic_without_replace_keeps_the_first_writer(tmp_path):
    import os

    from hf_soups.atomic_file import write_atomic

    path = tmp_path / "key"
    assert write_atomic(path, "first", mode=0o600, replace=False) is True
    assert write_atomic(path, "second", mode=0o600, replace=False) is False
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["key"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    import os

    from hf_soups.atomic_file import write_atomic

    path = tmp_path / "f.txt"
    path.write_text("old")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_in_place_writes_go_through_the_one_helper():
    """`os.replace` (and hand-made temporaries) appear in one module only; whole directories use AtomicDirectory."""
    import pathlib
    import re

    import hf_soups

    root = pathlib.Path(hf_soups.__file__).parent
    def using(pattern: str) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                      if re.search(pattern, p.read_text(encoding="utf-8")))

    assert using(r"os\.replace\(|os\.link\(|NamedTemporaryFile|\+ \"\.tmp\"|\.tmp\"\n") == ["atomic_file.py"]
    # the one other temporary file is the writability probe of the output directory (created and removed, no data)
    assert using(r"mkstemp\(") == ["atomic_file.py", "checkpoint/atomic.py"]


def test_architecture_key_goes_through_the_helper_private_and_never_replaced(tmp_path, monkeypatch):
    """A variant the issue does not name: the per-user cache key (0600, first writer wins) uses the helper too."""
    import os

    import hf_soups.atomic_file as atomic_file
    from hf_soups import architecture

    calls = []
    real = atomic_file.write_atomic

    def spy(path, data, **kw):
        calls.append((str(path), kw))
        return real(path, data, **kw)

    monkeypatch.setattr(architecture, "write_atomic", spy)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    architecture._secrets.clear()
    (tmp_path / "xdg").mkdir()
    key = architecture._secret()
    assert key is not None and calls and calls[-1][1] == {"mode": 0o600, "replace": False}
    assert os.stat(calls[-1][0]).st_mode & 0o777 == 0o600
    architecture._secrets.clear()


# ----------------------------------------------------------------------------- the verdict module imports no torch
def test_compat_source_imports_no_torch():
    """compat.py is the pure verdict: no import of torch (its package's `checkpoint/__init__` loads torch, so the
    check is on compat.py's own imports); the torch weight-distance check lives in hf_soups/distance.py."""
    import ast
    import pathlib

    import hf_soups.compat as compat
    import hf_soups.distance as distance

    def imported(module) -> set[str]:
        tree = ast.parse(pathlib.Path(module.__file__).read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add((node.module or "").split(".")[0])
        return names

    assert "torch" not in imported(compat)
    assert "torch" in imported(distance)  # the check moved, it did not vanish
    assert not any(hasattr(compat, n) for n in ("init_distances", "init_distance_warnings", "_Chunks"))
    assert callable(compat.init_outlier_warnings) and callable(compat.sample_tensor_names)


# ------------------------------------------------------------------------------------- the one checkpoint layout
def _old_needed_patterns(files, *, weights=True, allow_pickle=False):
    """`hub/client.needed_patterns` as it was before the layouts (copied verbatim): the reference the layouts keep."""
    import fnmatch

    from hf_soups import constants

    wanted = set(constants.AUX_FILES) | {"README.md", "adapter_config.json"}
    patterns = [f for f in files if f in wanted]
    if weights and "adapter_model.safetensors" in files:
        patterns.append("adapter_model.safetensors")
    elif weights and allow_pickle and "adapter_model.bin" in files:
        patterns.append("adapter_model.bin")
    if weights:
        if "model.safetensors.index.json" in files or "model.safetensors" in files:
            patterns += [f for f in files if f.endswith(".safetensors") or f == "model.safetensors.index.json"]
        elif allow_pickle:
            patterns += [f for f in files if fnmatch.fnmatch(f, "pytorch_model*.bin")
                         or f == "pytorch_model.bin.index.json"]
    return sorted(set(patterns))


_NAMES = ["config.json", "README.md", "tokenizer.json", "vocab.txt", "model.safetensors",
          "model.safetensors.index.json", "model-00001-of-00002.safetensors", "pytorch_model.bin",
          "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin", "adapter_config.json",
          "adapter_model.safetensors", "adapter_model.bin", "optimizer.pt", "trainer_state.json",
          "checkpoint-5/model.safetensors", "flax_model.msgpack", "training_args.bin"]


def test_download_sets_are_the_same_as_before_the_layouts():
    """Every subset of a 14-name vocabulary (and a seeded sample of the full 18), with and without weights and
    pickles: the layouts choose exactly the files the four hand-written rules chose."""
    import itertools
    import random

    from hf_soups.checkpoint.layout import download_patterns
    from hf_soups.hub.client import needed_patterns

    listings = [[n for n, keep in zip(_NAMES[:14], bits) if keep] for bits in itertools.product((0, 1), repeat=14)]
    rng = random.Random(0)
    listings += [rng.sample(_NAMES, rng.randint(0, len(_NAMES))) for _ in range(500)]
    for files in listings:
        for weights, allow_pickle in itertools.product((True, False), repeat=2):
            expected = _old_needed_patterns(files, weights=weights, allow_pickle=allow_pickle)
            assert download_patterns(files, weights=weights, allow_pickle=allow_pickle) == expected, files
            assert needed_patterns(files, weights=weights, allow_pickle=allow_pickle) == expected


def _resolved(repo_id):
    from hf_soups.hub.client import resolve
    from hf_soups.refs import IngredientRef

    return resolve(IngredientRef.parse(repo_id))


def _fetched(hub, repo_id):
    return {p.split("/resolve/")[1].split("/", 1)[1].split("?")[0] for m, p, s in hub.requests
            if m == "GET" and "/resolve/" in p and p.startswith(f"/{repo_id}/") and s == 200}


@pytest.mark.parametrize("kind,files,allow_pickle,expected", [
    ("sharded", ["config.json", "README.md", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                 "model-00002-of-00002.safetensors", "pytorch_model.bin", "optimizer.pt", "training_args.bin"], False,
     {"config.json", "README.md", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors"}),
    ("adapter", ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                 "trainer_state.json"], True,
     {"adapter_config.json", "adapter_model.safetensors", "README.md"}),
    ("pickled", ["config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
                 "pytorch_model-00002-of-00002.bin", "optimizer.pt", "tokenizer.json"], True,
     {"config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
      "pytorch_model-00002-of-00002.bin", "tokenizer.json"}),
])
def test_hub_fetches_each_layouts_files_and_nothing_else(api, hub, tmp_path, kind, files, allow_pickle, expected):
    """The loopback Hub's request log: what `download` fetches for a full model, an adapter and pickled shards."""
    from conftest import publish

    from hf_soups.hub.client import download

    folder = tmp_path / kind
    folder.mkdir()
    for name in files:
        (folder / name).write_text(f'{{"name": "{name}"}}' if name.endswith(".json") else name)  # distinct blobs
    repo_id = f"alice/layout-{kind}"
    publish(api, folder, repo_id)
    ing = _resolved(repo_id)
    hub.reset_counters()
    download(ing, cache_dir=str(tmp_path / "cache"), allow_pickle=allow_pickle)
    assert _fetched(hub, repo_id) == expected
    hub.reset_counters()
    download(ing, cache_dir=str(tmp_path / "cache2"), weights=False)
    assert _fetched(hub, repo_id) == {f for f in expected if f.endswith((".json", ".md", ".txt"))
                                      and "index" not in f}


def test_local_errors_name_the_layouts_files(tmp_path):
    from hf_soups.checkpoint.reader import open_checkpoint
    from hf_soups.errors import NoSafetensorsError

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NoSafetensorsError, match=r"no weights found \(neither model\.safetensors nor "
                       r"model\.safetensors\.index\.json\)\."):
        open_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(NoSafetensorsError, match=r"only pickled weights \(pytorch_model\.bin\) were found"):
        open_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").write_text("{}")  # the index is preferred, as before
    with pytest.raises(NoSafetensorsError, match=r"only pickled weights \(pytorch_model\.bin\.index\.json\)"):
        open_checkpoint(tmp_path)


def test_a_new_layout_is_one_registration(tmp_path, monkeypatch):
    """A made-up kind (`consolidated.safetensors` + `consolidated.json` marker): one Layout, registered, is read
    locally and joins the download set; nothing else changes."""
    import torch
    from safetensors.torch import save_file

    from hf_soups.checkpoint import layout as layouts
    from hf_soups.checkpoint.reader import open_checkpoint

    monkeypatch.setattr(layouts, "LAYOUTS", dict(layouts.LAYOUTS))
    toy = layouts.register_layout(layouts.Layout("consolidated", safetensors="consolidated.safetensors",
                                                 marker="consolidated.json"))
    with pytest.raises(ValueError, match="already registered"):
        layouts.register_layout(toy)
    save_file({"w": torch.arange(4.0)}, str(tmp_path / "consolidated.safetensors"))
    with open_checkpoint(tmp_path, layout=toy) as reader:
        assert torch.equal(reader["w"], torch.arange(4.0))
    listing = ["consolidated.safetensors", "consolidated.json", "notes.txt", "optimizer.pt"]
    assert layouts.download_patterns(listing) == ["consolidated.json", "consolidated.safetensors"]
    assert layouts.download_patterns(listing, weights=False) == ["consolidated.json"]


def test_trainer_checkpoint_layout_never_reads_training_state():
    """A variant the issue names only in passing: the Trainer checkpoint layout's weights are a full model's, and
    its optimizer/scheduler/RNG files and trainer_state.json are never read."""
    from fnmatch import fnmatchcase

    from hf_soups.checkpoint.layout import FULL_MODEL, TRAINER_CHECKPOINT, download_patterns
    from hf_soups.runs import consolidation_problem

    folder = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin",
              "trainer_state.json", "config.json"]
    assert TRAINER_CHECKPOINT.weight_names == FULL_MODEL.weight_names
    assert TRAINER_CHECKPOINT.find(folder).file == "model.safetensors"
    never = {f for f in folder if any(fnmatchcase(f, p) for p in TRAINER_CHECKPOINT.never_read)}
    assert never == {"optimizer.pt", "scheduler.pt", "rng_state_0.pth", "training_args.bin", "trainer_state.json"}
    assert not never & set(download_patterns(folder, allow_pickle=True))
    assert TRAINER_CHECKPOINT.folder.match("checkpoint-800") and not TRAINER_CHECKPOINT.folder.match("checkpoint-x")
    consolidation_problem(folder, "run/checkpoint-1")  # weights present: no problem
    with pytest.raises(Exception, match="holds no model weights"):
        consolidation_problem(["optimizer.pt", "trainer_state.json"], "run/checkpoint-1")


def test_weight_file_names_are_spelled_in_the_layout_only():
    """The four places that chose weight files (reader, client x2, stream) and the adapter and runs code name no
    weight file themselves."""
    import pathlib

    import hf_soups

    root = pathlib.Path(hf_soups.__file__).parent
    for rel in ("checkpoint/reader.py", "hub/client.py", "hub/stream.py", "checkpoint/adapter.py", "adapters.py",
                "runs/__init__.py", "runs/hub.py"):
        code = [line for line in (root / rel).read_text(encoding="utf-8").splitlines()
                if not line.lstrip().startswith(("#", '"', "`", "f\"", "fix=", "raise", "Looks", "are ", "Accept"))]
        text = "\n".join(code)
        for name in ('"model.safetensors"', '"model.safetensors.index.json"', '"pytorch_model.bin"',
                     '"pytorch_model.bin.index.json"', '"adapter_model.safetensors"', '"adapter_model.bin"',
                     '"adapter_config.json"', '"trainer_state.json"', 'endswith(".safetensors")'):
            assert name not in text, (rel, name)
