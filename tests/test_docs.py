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
