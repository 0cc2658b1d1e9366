"""docs/TRANSCRIPT.md is what the README quickstart and the CLI really print: regenerated and compared here."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_transcript_is_up_to_date():
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.run([sys.executable, os.path.join("docs", "make_transcript.py"), "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    changed = [line for line in proc.stdout.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert proc.returncode == 0, "\n".join(changed[:40] or [proc.stdout[-4000:], proc.stderr[-2000:]])


def test_every_test_named_in_the_security_page_exists():
    """docs/SECURITY.md cites its evidence as `tests/test_x.py::test_name` or, after one such, `::test_name` (same
    file): each cited test function must exist, so the page cannot point at a test that was renamed or removed."""
    import ast
    import re

    text = open(os.path.join(ROOT, "docs", "SECURITY.md"), encoding="utf-8").read()
    cited: list[tuple[str, str]] = []
    current = None
    for m in re.finditer(r"(?:(?:tests/)?(test_\w+\.py))?::(test_\w+)", text):
        current = m.group(1) or current
        assert current, f"'::{m.group(2)}' cites no file before it"
        cited.append((current, m.group(2)))
    assert len(cited) > 40  # the page's catalogue, not an empty match
    defined: dict[str, set[str]] = {}
    missing = []
    for file, name in cited:
        if file not in defined:
            path = os.path.join(ROOT, "tests", file)
            tree = ast.parse(open(path, encoding="utf-8").read()) if os.path.exists(path) else ast.Module(body=[])
            defined[file] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/SECURITY.md cites tests that do not exist: {missing}"
