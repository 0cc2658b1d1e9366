"""`hf-soups diagnose`: distances, task-vector cosines and interpolation curves before souping."""

from __future__ import annotations

import argparse

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Run `hf-soups diagnose` (its flags are rows of the CLI's flag table): prints the table, or the JSON with
    --json, and writes --plot. Returns 0."""
    from ..diagnosis import diagnose
    from ..hub.access import HubAccess
    from ..recipes import EvalSpec

    spec = EvalSpec(split=args.eval_split, metric=args.metric or "accuracy", text_column=_text_column(args.text_column),
                    label_column=args.label_column, max_samples=args.max_eval_samples)
    found = diagnose(args.refs, base=args.base, eval_dataset=args.eval_dataset, revision=args.revision,
                     access=HubAccess(token=args.token), eval_spec=spec, trust_remote_code=args.trust_remote_code,
                     allow_pickle=args.allow_pickle)
    if args.plot:
        found.plot(args.plot)
    print(found.to_json() if args.json else found)
    return 0


def _text_column(columns: list[str] | None) -> str | tuple[str, ...] | None:
    """--text-column once (a column) or twice (a sentence pair), as `hf-soups soup` reads it."""
    if not columns:
        return None
    return columns[0] if len(columns) == 1 else tuple(columns)
