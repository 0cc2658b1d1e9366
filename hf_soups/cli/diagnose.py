"""`hf-soups diagnose`: distances, task-vector cosines and interpolation curves before souping."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `diagnose` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "diagnose", help="tell whether fine-tunes share a basin (distances, task-vector cosines, interpolation curves)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  hf-soups diagnose user/ft-1 user/ft-2 user/ft-3 --base bert-base-uncased\n"
               "  hf-soups diagnose ./ft-* --eval-dataset val.csv --plot basin.png --json basin.json\n")
    p.add_argument("refs", nargs="+", metavar="REF",
                   help="repo id, repo@revision, local checkpoint directory, or @FILE (one ref per line)")
    p.add_argument("--base", default=None, metavar="REF", help="the pretrained checkpoint (task-vector cosines)")
    p.add_argument("--eval-dataset", default=None,
                   help="held-out data (as `hf-soups soup`): adds scores and the interpolation curves")
    p.add_argument("--eval-split", default=None, help="split of --eval-dataset (Hub datasets and DatasetDicts)")
    p.add_argument("--max-eval-samples", type=int, default=None, metavar="N",
                   help="evaluate only the first N examples of --eval-dataset")
    p.add_argument("--metric", default="accuracy", help="the metric of the curves (default accuracy)")
    p.add_argument("--text-column", default=None, help="text column (default: text or sentence)")
    p.add_argument("--label-column", default=None, help="label column (default: label)")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the curves and the cosine heatmap here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the diagnosis as JSON here ('-': stdout)")
    p.add_argument("--revision", default=None, help="revision (branch, tag or sha) for refs without their own @rev")
    p.add_argument("--token", default=None, help="Hub token (defaults to HF_TOKEN or the saved login); never printed")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pytorch_model.bin checkpoints, loaded with torch.load(weights_only=True)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow auto_map model classes (evaluation)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(command_parser=p)


def run(args: argparse.Namespace) -> int:
    """Run `hf-soups diagnose`; prints the table (and writes --plot/--json). Returns 0."""
    from ..diagnosis import diagnose

    found = diagnose(args.refs, base=args.base, eval_dataset=args.eval_dataset, revision=args.revision,
                     token=args.token, split=args.eval_split, metric=args.metric, text_column=args.text_column,
                     label_column=args.label_column, max_samples=args.max_eval_samples,
                     trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    if args.plot:
        found.plot(args.plot)
    if args.json == "-":
        print(found.to_json())
    else:
        print(found)
        if args.json:
            from ..atomic_file import write_atomic

            write_atomic(os.fspath(args.json), found.to_json() + "\n")
    return 0
