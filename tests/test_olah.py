"""The download path checked against an independent Hub implementation: PyPI's olah serving local git repos offline.

olah runs from its own virtual environment (.venv-olah, made by `make test`), so its dependencies stay apart.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
import torch
from conftest import state_dict_of

from hf_soups import IncompatibleIngredientsError, soup_from_hub
from hf_soups.testing import make_tiny_bert
from hf_soups import HubAccess, MergeOptions

OLAH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-olah", "bin", "olah-cli")


def _git_repo(src, dst, tag=None):
    shutil.copytree(src, dst)
    git = ["git", "-C", str(dst), "-c", "user.email=t@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(dst)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "upload"], check=True)
    if tag:
        subprocess.run([*git, "tag", tag], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def olah(family, tmp_path_factory):
    assert os.path.exists(OLAH), "olah is not installed: `make test` creates .venv-olah with it"
    root = tmp_path_factory.mktemp("olah")
    mirrors = root / "mirrors" / "models" / "org"
    shas = {name: _git_repo(family[name], mirrors / name, tag="v1" if name == "a" else None) for name in "acd"}
    shas["two"] = _git_repo(make_tiny_bert(root / "two-src", num_labels=2), mirrors / "two")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    (root / "config.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\nmirrors-path = ["{root / "mirrors"}"]\n'
        f'repos-path = "{root / "repos"}"\nlog-path = "{root / "logs"}"\n\n[accessibility]\noffline = true\n')
    log = open(root / "olah.log", "w")
    proc = subprocess.Popen([OLAH, "-c", str(root / "config.toml")], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (root / "olah.log").read_text()
            time.sleep(0.3)
    yield {"url": url, "shas": shas, "root": root}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_soup_through_olah_matches_local_soup(olah, family, tmp_path):
    shas = olah["shas"]
    refs = [f"org/a@{shas['a']}", f"org/c@{shas['c']}", f"org/d@{shas['d']}"]
    cache = str(tmp_path / "cache")
    soup = soup_from_hub(refs, merge_options=MergeOptions(progress=False), access=HubAccess(endpoint=olah["url"],
                         cache_dir=cache), output_dir=tmp_path / "olah")
    assert [i.revision for i in soup.ingredients] == [shas["a"], shas["c"], shas["d"]]
    local = soup_from_hub([family["a"], family["c"], family["d"]], output_dir=tmp_path / "local",
                          merge_options=MergeOptions(progress=False))
    a, b = state_dict_of(soup.output_dir), state_dict_of(local.output_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    streamed = soup_from_hub(refs, merge_options=MergeOptions(stream=True, progress=False),
                             access=HubAccess(endpoint=olah["url"], cache_dir=str(tmp_path / "c2")),
                             output_dir=tmp_path / "stream")
    c = state_dict_of(streamed.output_dir)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_preflight_refuses_through_olah(olah, tmp_path):
    shas = olah["shas"]
    with pytest.raises(IncompatibleIngredientsError, match="num_labels"):
        soup_from_hub([f"org/a@{shas['a']}", f"org/two@{shas['two']}"], merge_options=MergeOptions(progress=False),
                      access=HubAccess(endpoint=olah["url"], cache_dir=str(tmp_path / "cache")),
                      output_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    snapshots = [p for p, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".safetensors")]
    assert not snapshots  # headers only: no weights were downloaded


def test_unpinned_refs_resolve_main_through_olah(olah, tmp_path):
    """olah routes model_info only as /api/models/<repo>/revision/<rev>: an unpinned ref must ask for "main"."""
    from hf_soups import check_compatibility

    shas = olah["shas"]
    report = check_compatibility(["org/c", "org/d"], endpoint=olah["url"], cache_dir=str(tmp_path / "cache"))
    assert report.compatible
    soup = soup_from_hub(["org/c", "org/d"], merge_options=MergeOptions(progress=False),
                         access=HubAccess(endpoint=olah["url"], cache_dir=str(tmp_path / "cache")),
                         output_dir=tmp_path / "soup")
    assert [i.revision for i in soup.ingredients] == [shas["c"], shas["d"]]
