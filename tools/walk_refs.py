"""Walk `soup_from_hub`'s refs through the package and count the climbs back up the data flow.

The data flow of a soup has eight stages, in order:

    refs -> resolve -> verdict -> plan -> engine -> writer -> card -> push

Every module of the package belongs to one stage (`STAGES`, the one table), or to none: leaves that any stage may
call (errors, constants, text, validation), the conductor (`api.py`) and value types. A run of `soup_from_hub` on two
tiny local checkpoints is traced with `sys.setprofile`; each call that enters a package file other than the one the
flow is in is a *stop*, and a *return* when that file was entered before. A *climb* is a stop in a staged module
whose stage comes before the stage of the previous staged stop: the flow went back up to a room the data had
already left (the verdict settled after the merge, the card reaching back into the plan), whoever made the call (the
conductor `api.py` included). Climbs are counted once per distinct pair of (module, function) stops, so that a loop
over tensors counts as the one climb it is in the code.

Usage: `python tools/walk_refs.py [--json] [--show]`. Prints the stops, the files and the climbs (and, with
`--show`, each climb). Exit status 2 when a package module entered has no row in `STAGES` (give it one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ORDER = ("refs", "resolve", "verdict", "plan", "engine", "writer", "card", "push")

#: Package module (path relative to `hf_soups/`, or a folder ending in "/") -> its stage, or None for no stage.
#: The longest matching key wins.
STAGES: dict[str, str | None] = {
    # no stage: the conductor, the front door, leaves, and the values any stage may read
    "__init__.py": None, "__main__.py": None, "api.py": None, "options.py": None, "cli/": None, "testing/": None,
    "errors.py": None, "constants.py": None, "text.py": None, "validation.py": None, "metric_spec.py": None,
    "callback.py": None, "problem.py": None, "modeling.py": None, "hub/access.py": None, "hub/_errors.py": None,
    "hub/_http.py": None, "checkpoint/atomic.py": None, "checkpoint/format.py": None, "checkpoint/safe_files.py": None,
    "evaluation/distributed.py": None, "merge/options.py": None, "recipes/recipe.py": None,
    "recipes/registry.py": None,  # the method table every stage reads (#23 item 1)
    "refs.py": None,  # the values that flow through every stage (IngredientRef, Ingredient, IngredientMeta)
    "adapters.py": None,  # an ingredient kind: its hook for each stage (resolve its base, verdict, open, export)
    "evaluation/tasks/": None,  # task plug-ins: each stage asks its task (labels, forward and loss, card snippet)
    "merge/plan.py": None,  # the MergePlan value the plan stage builds and the engine executes
    "checkpoint/reader.py": None, "checkpoint/sources.py": None,  # byte access: headers (resolve), tensors (engine)
    "checkpoint/meta.py": None,  # what small files say (config, card, id2label): read by resolve, verdict and card
    "checkpoint/layout.py": None,  # the table of ingredient kinds' files, read wherever files are named (#23 item 3)
    "atomic_file.py": None,
    # refs: what the user named
    "runs/": "refs", "hub/discovery.py": "refs",
    # resolve: pinned to shas, small files and headers read
    "guards.py": "resolve", "metas.py": "resolve", "hub/__init__.py": "resolve", "hub/client.py": "resolve",
    "checkpoint/__init__.py": "resolve", "checkpoint/local.py": "resolve", "checkpoint/adapter.py": "resolve",
    # verdict: can these be souped?
    "preflight.py": "verdict", "compat.py": "verdict", "architecture.py": "verdict", "base.py": "verdict",
    "distance.py": "verdict",  # the weight-space init check: warnings of the verdict, read from the opened weights
    # plan: which weights, for which tensors (methods, statistics, held-out selection)
    "merge/__init__.py": "plan", "merge/stats.py": "plan", "recipes/": "plan",
    "evaluation/": "plan",
    # engine: tensors read and averaged
    "merge/engine.py": "engine", "merge/ops.py": "engine", "merge/numerics.py": "engine", "hub/stream.py": "engine",
    # writer: the atomic commit of weights and companion files
    "checkpoint/writer.py": "writer", "checkpoint/companions.py": "writer",
    # card: the result, its evaluation and its card
    "soup.py": "card", "card.py": "card", "plots.py": "card", "evaluation/report.py": "card",
    "evaluation/batchnorm.py": "card", "diagnose.py": "card",
    # push
    "hub/push.py": "push",
}


def stage_of(module: str) -> str | None:
    """The stage of a package module (`"merge/plan.py"`), or None; raises KeyError for a module with no row."""
    best = max((k for k in STAGES if module == k or (k.endswith("/") and module.startswith(k))), key=len,
               default=None)
    if best is None:
        raise KeyError(module)
    return STAGES[best]


@dataclass
class Walk:
    """What a traced run entered: `stops` (module, function) in order, and the climbs among them."""

    stops: list[tuple[str, str]] = field(default_factory=list)
    climbs: list[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=list)
    returns: int = 0
    unknown: set[str] = field(default_factory=set)

    @property
    def files(self) -> list[str]:
        return sorted({m for m, _ in self.stops})

    def as_dict(self) -> dict[str, Any]:
        return {"stops": len(self.stops), "files": len(self.files), "returns": self.returns,
                "climbs": len(self.climbs),
                "climbs_detail": [f"{a[0]}:{a[1]} -> {b[0]}:{b[1]}" for a, b in self.climbs],
                "unknown": sorted(self.unknown)}


def walk(fn: Callable[[], Any]) -> Walk:
    """Run `fn` under `sys.setprofile` (this thread) and count the stops, returns and climbs through the package."""
    import hf_soups

    root = os.path.dirname(os.path.abspath(hf_soups.__file__)) + os.sep
    result = Walk()
    state: dict[str, Any] = {"file": None, "staged": None, "seen": set()}
    modules: dict[str, str | None] = {}

    def module_of(path: str) -> str:
        module = path[len(root):].replace(os.sep, "/")
        if module not in modules:
            try:
                modules[module] = stage_of(module)
            except KeyError:
                result.unknown.add(module)
                modules[module] = None
        return module

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(root) or path == state["file"] or frame.f_code.co_name == "__del__":
            return  # (a finaliser runs wherever the GC does)
        if path in state["seen"]:
            result.returns += 1
        state["file"] = path
        state["seen"].add(path)
        module = module_of(path)
        stop = (module, frame.f_code.co_name)
        result.stops.append(stop)
        if modules[module] is None:
            return
        previous = state["staged"]
        if previous is not None and ORDER.index(modules[module]) < ORDER.index(modules[previous[0]]):  # type: ignore
            if (previous, stop) not in result.climbs:
                result.climbs.append((previous, stop))
        state["staged"] = stop

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return result


def walk_uniform_soup(root: str) -> Walk:
    """Two tiny local checkpoints, souped once untraced (imports, caches) and then once under the walk."""
    from hf_soups import MergeOptions, soup_from_hub
    from hf_soups.testing import make_tiny_bert, perturb_checkpoint

    base = make_tiny_bert(os.path.join(root, "base"), seed=0)
    refs = [perturb_checkpoint(base, os.path.join(root, "a"), seed=1),
            perturb_checkpoint(base, os.path.join(root, "b"), seed=2)]
    options = MergeOptions(progress=False)
    soup_from_hub(refs, output_dir=os.path.join(root, "warm"), merge_options=options)
    return walk(lambda: soup_from_hub(refs, output_dir=os.path.join(root, "soup"), merge_options=options))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--show", action="store_true", help="print each climb")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="walk-refs-") as root:
        result = walk_uniform_soup(root)
    summary = result.as_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"stops: {summary['stops']}\nfiles: {summary['files']}\nreturns: {summary['returns']}\n"
              f"climbs: {summary['climbs']}")
        if args.show:
            for line in summary["climbs_detail"]:
                print(f"  climb: {line}")
    if result.unknown:
        print(f"modules with no stage in STAGES: {', '.join(sorted(result.unknown))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
