"""Every error hint names something that exists: each `name=` in a `fix=` text of the package is a real parameter.

The walk is over the source (ast), so it covers hints of errors that no other test provokes.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import inspect
import os
import re

import hf_soups
from hf_soups import (EvalSpec, MergeOptions, check_compatibility, find_ingredients, run_checkpoints,
                      soup_from_hub)
from hf_soups.api import replay_recipe
from hf_soups.cli.main import build_parser
from hf_soups.evaluation.report import evaluate_soup

PACKAGE_DIR = os.path.dirname(hf_soups.__file__)
ERRORS = set(hf_soups.errors.__all__)
_KEYWORD = re.compile(r"(?<![\w.\-{}])([A-Za-z_{}][\w{}]*)=(?!=)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_CALL = re.compile(r"([A-Za-z_][\w.]*)\(([^()]*)\)")
OURS = {"soup_from_hub", "check_compatibility", "replay_recipe", "find_ingredients", "EvalSpec", "MergeOptions",
        "run_checkpoints", "SoupCallback"}
_OTHER_COMMAND = re.compile(r"`(?!hf-soups )[^`]*`")  # `python zero_to_fp32.py ... --safe_serialization`: not ours


def _keywords(text: str) -> list[str]:
    """The `name=` in a hint, leaving out those inside calls of other libraries (`torch.load(weights_only=True)`)."""
    text = _CALL.sub(lambda m: m.group(0) if m.group(1).split(".")[-1] in OURS else "", text)
    return _KEYWORD.findall(text)


def _valid_keywords() -> set[str]:
    names = set()
    from hf_soups.callback import SoupCallback

    for fn in (soup_from_hub, check_compatibility, replay_recipe, find_ingredients, evaluate_soup, run_checkpoints,
               SoupCallback.__init__):
        names |= set(inspect.signature(fn).parameters)
    names |= {f.name for f in dataclasses.fields(EvalSpec)} | {f.name for f in dataclasses.fields(MergeOptions)}
    return names - {"deprecated"}


def _cli_flags() -> set[str]:
    flags = set()
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():  # noqa: SLF001
        for a in action._actions:  # noqa: SLF001
            flags.update(s for s in a.option_strings if s.startswith("--"))
    return flags


def _texts(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """The literal text of a `fix=` expression: strings, f-strings (`{}` for each placeholder), module constants."""
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            out.append(sub.value)
        elif isinstance(sub, ast.Name) and sub.id in constants:
            out.append(constants[sub.id])
    # a JoinedStr's constant parts are also visited on their own: drop those duplicates
    return [t for t in out if not any(t != o and t in o for o in out)]


def _hints() -> list[tuple[str, str]]:
    """`(where, text)` for every `fix=` of an hf_soups error raised in the package."""
    found = []
    for dirpath, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), path)
            constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                         and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                         for t in n.targets if isinstance(t, ast.Name)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func not in ERRORS and func != "Problem":
                    continue
                fixes = [k.value for k in node.keywords if k.arg == "fix"]
                if func == "Problem" and len(node.args) >= 4:
                    fixes.append(node.args[3])
                where = f"{os.path.relpath(path, PACKAGE_DIR)}:{node.lineno}"
                for fix in fixes:
                    found += [(where, text) for text in _texts(fix, constants)]
    return found


def test_every_keyword_in_a_hint_exists():
    valid = _valid_keywords()
    hints = _hints()
    assert len(hints) > 50  # the walk sees the package's hints
    bad = []
    for where, text in hints:
        for name in _keywords(text):
            if not any(fnmatch.fnmatch(v, name.replace("{}", "*")) for v in valid):
                bad.append(f"{where}: '{name}=' in {text!r}")
    assert not bad, "hints name parameters that do not exist:\n" + "\n".join(bad)


def test_every_flag_in_a_hint_exists():
    flags = _cli_flags()
    bad = [f"{where}: '{flag}' in {text!r}" for where, text in _hints()
           for flag in _FLAG.findall(_OTHER_COMMAND.sub("", text)) if flag not in flags]
    assert not bad, "hints name CLI flags that do not exist:\n" + "\n".join(bad)


def test_the_walk_catches_a_made_up_parameter():
    tree = ast.parse('raise SoupError("x", fix=f"pass label_colum={1} or " + HINT)')
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    texts = _texts(call.keywords[0].value, {"HINT": "token=True"})
    names = {n for t in texts for n in _keywords(t)}
    assert names == {"label_colum", "token"}
    assert _keywords("pass EvalSpec(strct=True), or torch.load(weights_only=True)") == ["strct"]
    assert not any(fnmatch.fnmatch(v, "label_colum") for v in _valid_keywords())
