"""Issue #24's whole bad-input catalogue through the real `hf-soups` CLI, one subprocess per case.

Every case must end under a timeout, print no traceback, and never exit 1 (which means "incompatible") unless the
case is a genuine incompatibility verdict. Where the issue (or the CLI's exit-code table) says which code, the case
checks that code too, and some check what was written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import WRITE_TOKEN, publish

from hf_soups.testing import make_tiny_bert, make_tiny_vit, perturb_checkpoint

TIMEOUT_S = 60


@dataclass
class Case:
    argv: list[str]
    codes: set[int]  # the exit codes this case may end with
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    check: Callable[[subprocess.CompletedProcess], None] | None = None  # more about what was (not) written


# ------------------------------------------------------------------------------------------------ fake endpoints

def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _EndlessEmptyPages(BaseHTTPRequestHandler):
    """Every page is empty and links to a next one."""

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Link", f'<http://127.0.0.1:{port}/api/models?cursor={time.monotonic_ns()}>; rel="next"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Silent(BaseHTTPRequestHandler):
    """Accepts the connection, reads the request, never answers."""

    def do_GET(self):  # noqa: N802
        time.sleep(600)

    def log_message(self, *args):
        pass


# ------------------------------------------------------------------------------------------------ files

def _bomb_png(path: str) -> str:
    """A valid PNG header claiming 40000 x 40000 pixels (1.6 G, over PIL's bomb limit) in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                + chunk(b"IEND", b""))
    return path


def _edit_tensors(path: str, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    save_file(edit(load_file(file)), file, metadata={"format": "pt"})


def _rename_classifier(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("classifier.", "classifier_renamed."): v for k, v in tensors.items()}


def _write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def cat(tmp_path_factory, hub, api, family):  # noqa: C901 - one place builds every case's inputs
    root = str(tmp_path_factory.mktemp("catalogue"))
    p = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    bert = make_tiny_bert(p("bert"), seed=0)
    bert2 = perturb_checkpoint(bert, p("bert2"), seed=1)
    cases: dict[str, Case] = {}

    # -- @refs files (issue item 9)
    os.mkfifo(p("refs.fifo"))
    os.mkdir(p("refs-dir"))
    os.symlink("/dev/urandom", p("refs-random"))
    with open(p("refs-binary"), "wb") as f:
        f.write(b"user/model\n\xff\xfe\x00\x01")
    open(p("refs-empty"), "w").close()
    with open(p("refs-nested"), "w") as f:
        f.write(f"{bert}\n@{p('refs-empty')}\n")
    for name, target in [("dev-zero", "/dev/zero"), ("fifo", p("refs.fifo")), ("directory", p("refs-dir")),
                         ("symlink-to-urandom", p("refs-random")), ("binary", p("refs-binary")),
                         ("empty", p("refs-empty")), ("nested", p("refs-nested"))]:
        cases[f"refs-{name}"] = Case(["check", f"@{target}", bert], {2})
    cases["refs-missing"] = Case(["check", f"@{p('no-such-refs')}", bert], {3})
    cases["write-refs-into-a-directory"] = Case(["find", "--author", "alice", "--write-refs", p("refs-dir")], {2})

    # -- invalid repo ids on the command line (item 5): one line, exit 3
    for name, repo_id in [("unicode", "usér/mödel"), ("3000-chars", "a/" + "b" * 3000),
                          ("trailing-newline", "alice/model\n"), ("three-parts", "alice/model/extra")]:
        cases[f"repo-id-{name}"] = Case(["check", repo_id, bert], {3})

    # -- a collection item that names a local folder (item 4): a rejected row, never a local ingredient
    publish(api, family["a"], "alice/cat-a")
    publish(api, family["c"], "alice/cat-c")
    coll = api.create_collection("catalogue local folder")
    for repo in ("alice/cat-a", "alice/cat-c"):
        api.add_collection_item(coll.slug, repo, "model")
    entry = dict(hub.collections[coll.slug].items[-1])
    entry.update(id="bert-a", _id="0" * 24, position=2)
    hub.collections[coll.slug].items.append(entry)
    os.mkdir(p("cwd"))
    shutil.copytree(family["d"], p("cwd", "bert-a"))

    def no_local_ingredient(proc):
        refs = open(p("cwd", "refs.txt")).read()
        assert "bert-a" not in refs.replace("alice/", "") and "bert-a" in proc.stdout

    cases["collection-item-is-a-local-folder"] = Case(
        ["find", "--collection", coll.slug, "--write-refs", "refs.txt", "--token", WRITE_TOKEN], {0}, cwd=p("cwd"),
        check=no_local_ingredient)
    cases["collection-item-is-a-local-folder-under-python-O"] = Case(
        ["find", "--collection", coll.slug, "--write-refs", "refs.txt", "--token", WRITE_TOKEN], {0}, cwd=p("cwd"),
        env={"PYTHONOPTIMIZE": "1"}, check=no_local_ingredient)

    # -- listings that never end or never answer (item 6): HubConnectionError, exit 9
    endless, silent = _serve(_EndlessEmptyPages), _serve(_Silent)
    servers = [endless, silent]
    for name, server in [("endless-empty-pages", endless), ("silent-server", silent)]:
        cases[f"listing-{name}"] = Case(["find", "--author", "alice", "--limit", "5"], {9}, env={
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5", "HF_SOUPS_HUB_TIMEOUT": "5", "HF_SOUPS_LISTING_DEADLINE": "20"})

    # -- label values in --eval-dataset (item 7): EvaluationError, exit 8
    good = [{"text": "good movie", "label": 1}, {"text": "bad movie", "label": 0}]
    for name, value in [("nan", float("nan")), ("list", [0, 1]), ("empty", ""), ("fractional", 2.9),
                        ("negative-fraction", -0.4), ("out-of-range", 7)]:
        data = _write_jsonl(p(f"labels-{name}.jsonl"), [*good, {"text": "odd row", "label": value}])
        cases[f"label-{name}"] = Case(["soup", bert, bert2, "--method", "greedy", "--eval-dataset", data,
                                       "--output", p(f"out-label-{name}")], {8})
    with open(p("labels-blank.csv"), "w") as f:
        f.write("text,label\ngood movie,1\nodd row,\n")
    cases["label-blank-csv-cell"] = Case(["soup", bert, bert2, "--method", "greedy", "--eval-dataset",
                                          p("labels-blank.csv"), "--output", p("out-label-blank")], {8})

    # -- image paths in evaluation data (item 8): the row named, exit 8
    vit = make_tiny_vit(p("vit"), seed=0)
    vit2 = perturb_checkpoint(vit, p("vit2"), seed=1)
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(p("ok.png"))
    os.mkfifo(p("image.fifo"))
    os.mkdir(p("image-dir"))
    with open(p("not-an-image.png"), "w") as f:
        f.write("this is text, not a PNG\n")
    bad_images = {"fifo": p("image.fifo"), "directory": p("image-dir"), "missing": p("missing.png"),
                  "decompression-bomb": _bomb_png(p("bomb.png")), "not-an-image": p("not-an-image.png")}
    for name, path in bad_images.items():
        with open(p(f"images-{name}.csv"), "w") as f:
            f.write(f"image,label\n{p('ok.png')},0\n{path},1\n")
        cases[f"image-{name}"] = Case(["soup", vit, vit2, "--method", "greedy", "--eval-dataset",
                                       p(f"images-{name}.csv"), "--image-column", "image",
                                       "--output", p(f"out-image-{name}")], {8})

    # -- a degenerate ingredient in greedy (item 10): rejected, with the reason in the card
    degenerate = perturb_checkpoint(bert, p("degenerate"), seed=2)
    _edit_tensors(degenerate, lambda t: {k: (torch.full_like(v, 1e38) if k.startswith("classifier.") else v)
                                         for k, v in t.items()})
    texts = _write_jsonl(p("texts.jsonl"), [{"text": w, "label": i % 2} for i, w in
                                            enumerate(["good", "bad", "fine", "awful", "great", "poor"] * 3)])

    def degenerate_rejected(proc):
        assert "degenerate: weight 0.0000" in proc.stdout, proc.stdout
        assert "logit" in open(p("out-degenerate", "README.md")).read().lower()

    cases["greedy-degenerate-ingredient"] = Case(["soup", degenerate, bert, bert2, "--method", "greedy",
                                                  "--eval-dataset", texts, "--output", p("out-degenerate")], {0},
                                                 check=degenerate_rejected)

    # -- mixed fp16 + bf16 ingredients (item 11): config.json says what is written
    half = perturb_checkpoint(bert, p("half"), seed=3, dtype=torch.float16)
    brain = perturb_checkpoint(bert, p("brain"), seed=4, dtype=torch.bfloat16)

    def config_matches_weights(out):
        def check(proc):
            from safetensors import safe_open

            with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
                written = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
            config = json.load(open(os.path.join(out, "config.json")))
            declared = config.get("torch_dtype") or config.get("dtype")
            names = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
            assert names.get(declared) in written and len(written - {"I64"}) == 1, (declared, written)
        return check

    for order, refs in [("fp16-first", [half, brain]), ("bf16-first", [brain, half])]:
        out = p(f"out-mixed-{order}")
        cases[f"mixed-dtypes-{order}"] = Case(["soup", *refs, "--output", out], {0},
                                              check=config_matches_weights(out))

    # -- a planted architecture-cache entry (item 3): the refusal stands (exit 1 is the genuine verdict)
    renamed = perturb_checkpoint(bert, p("renamed"), seed=5)
    renamed2 = perturb_checkpoint(bert, p("renamed2"), seed=6)
    for path in (renamed, renamed2):
        _edit_tensors(path, _rename_classifier)
    from hf_soups.architecture import _CACHE_FORMAT, _build, _cache_path

    config = json.load(open(os.path.join(renamed, "config.json")))
    saved = os.environ.get("HF_SOUPS_CACHE")
    planted = {"unknown-class": {"format": _CACHE_FORMAT, "unknown_class": "Anything"},
               "ignore-everything": None, "malformed-regex": None, "fresh": None}
    try:
        for name, content in planted.items():
            os.environ["HF_SOUPS_CACHE"] = p(f"cache-{name}")
            entry_path = _cache_path(config)
            os.makedirs(os.path.dirname(entry_path), exist_ok=True)
            if name in ("ignore-everything", "malformed-regex"):
                pattern = ".*" if name == "ignore-everything" else "("
                content = {**_build(config).to_json(), "ignore_unexpected": [pattern], "ignore_missing": [pattern]}
            if content is not None:
                with open(entry_path, "wb") as f:
                    f.write(content if isinstance(content, bytes) else json.dumps(content).encode())
            cases[f"arch-cache-{name}"] = Case(["check", renamed, renamed2], {1},
                                               env={"HF_SOUPS_CACHE": p(f"cache-{name}")},
                                               check=lambda proc: "INCOMPATIBLE" in proc.stdout or pytest.fail(
                                                   proc.stdout))
    finally:
        if saved is None:
            os.environ.pop("HF_SOUPS_CACHE", None)
        else:
            os.environ["HF_SOUPS_CACHE"] = saved

    yield cases
    for server in servers:
        server.shutdown()


IDS = [f"refs-{n}" for n in ("dev-zero", "fifo", "directory", "symlink-to-urandom", "binary", "empty", "nested",
                             "missing")] + [
    "write-refs-into-a-directory",
    *[f"repo-id-{n}" for n in ("unicode", "3000-chars", "trailing-newline", "three-parts")],
    "collection-item-is-a-local-folder", "collection-item-is-a-local-folder-under-python-O",
    "listing-endless-empty-pages", "listing-silent-server",
    *[f"label-{n}" for n in ("nan", "list", "empty", "fractional", "negative-fraction", "out-of-range",
                             "blank-csv-cell")],
    *[f"image-{n}" for n in ("fifo", "directory", "missing", "decompression-bomb", "not-an-image")],
    "greedy-degenerate-ingredient", "mixed-dtypes-fp16-first", "mixed-dtypes-bf16-first",
    *[f"arch-cache-{n}" for n in ("fresh", "unknown-class", "ignore-everything", "malformed-regex")],
]


def test_the_catalogue_lists_every_case(cat):
    assert sorted(cat) == sorted(IDS)


@pytest.mark.parametrize("case", IDS)
def test_bad_input(cat, case):
    c = cat[case]
    try:
        proc = subprocess.run([sys.executable, "-m", "hf_soups", *c.argv], capture_output=True, text=True,
                              timeout=TIMEOUT_S, cwd=c.cwd, stdin=subprocess.DEVNULL,
                              env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", **c.env})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{case}: still running after {TIMEOUT_S} s (a hang); stderr so far: {e.stderr!r:.2000}")
    said = f"{case}: exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, said
    assert proc.returncode != 1 or c.codes == {1}, said  # 1 means "incompatible", never a crash
    assert proc.returncode in c.codes, said
    if proc.returncode not in (0, 1):  # an error, not a verdict: the CLI's one-line message
        assert "hf-soups: error:" in proc.stderr, said
    if c.check is not None:
        c.check(proc)


def test_the_silent_server_accepts_and_never_answers():
    """The silent-server case is only meaningful if the server really accepts and then never answers."""
    server = _serve(_Silent)
    try:
        with socket.create_connection(server.server_address, timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(1)
            with pytest.raises(socket.timeout):
                s.recv(1)
    finally:
        server.shutdown()
