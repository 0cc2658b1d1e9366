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


def _readme_block(start: str) -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Extending hf_soups"):]
    i = section.index(start)
    return section[i:section.index("```", i)]


def test_readme_smallest_method_file_soups_and_replays(family, tmp_path):
    """The README's smallest complete method, run as shown (under another name: tests/toy_method.py registers the
    same one): the classifier is the first ingredient's, everything else the mean, and a replay gives the same."""
    import torch
    from conftest import state_dict_of

    from hf_soups import replay_recipe, soup_from_hub
    from hf_soups.recipes import METHODS

    code = _readme_block("from hf_soups.recipes import").replace("head_from_first", "readme_head_from_first")
    try:
        exec(compile(code, "README.md", "exec"), {})
        refs = [family["a"], family["c"], family["d"]]
        soup = soup_from_hub(refs, method="readme_head_from_first", output_dir=tmp_path / "s")
        got, sds = state_dict_of(soup.output_dir), [state_dict_of(r) for r in refs]
        for name, tensor in got.items():
            if name.startswith("classifier."):
                assert torch.equal(tensor, sds[0][name])
            elif tensor.is_floating_point():
                torch.testing.assert_close(tensor, torch.stack([sd[name].float() for sd in sds]).mean(0),
                                           rtol=1e-6, atol=1e-7)
        again = replay_recipe(soup.recipe, tmp_path / "r", allow_local=True)
        assert all(torch.equal(t, state_dict_of(again.output_dir)[n]) for n, t in got.items())
    finally:
        METHODS.pop("readme_head_from_first", None)


def test_readme_smallest_task_file_is_dispatched_and_scores():
    """The README's smallest complete task, run as shown: a config of its problem_type gets it, and its metric is
    the mean of the per-class recalls."""
    from transformers import BertConfig

    from hf_soups.evaluation.tasks import TASKS, task_for

    namespace: dict = {}
    before = list(TASKS)
    try:
        exec(compile(_readme_block("import numpy as np"), "README.md", "exec"), namespace)
        config = BertConfig(num_labels=2, problem_type="balanced_binary",
                            architectures=["BertForSequenceClassification"]).to_dict()
        task = task_for(config)
        assert type(task) is namespace["BalancedBinary"]
        metric = task.metrics()["balanced_accuracy"]
        assert metric.higher_is_better
        assert metric.compute([1, 1, 1, 0], [1, 1, 0, 0]) == (1.0 + 0.5) / 2
    finally:
        TASKS[:] = before
