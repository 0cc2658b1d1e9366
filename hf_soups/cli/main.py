"""The `hf-soups` command line: a thin front over the Python API.

Exit codes:
    0  success (for `check`: the ingredients are compatible; for `find`: at least two compatible fine-tunes found)
    1  `check`: the ingredients are incompatible; `find`: fewer than two compatible fine-tunes found; other commands:
       the verdict was negative
    2  usage error (bad flags or argument values)
    3  a repo, revision, directory or file was not found
    4  authentication needed or refused (pass --token or run `hf auth login`)
    5  unsafe or corrupt input refused (pickles, remote code, malformed safetensors, NaN/Inf)
    6  the output cannot be written: it holds something hf-soups did not write (--overwrite replaces only a soup
       hf-soups wrote, never the current, home or an ingredient directory), it changed during the run (the new
       soup is kept as <output>.hf-soups-new-<timestamp>), it is read-only or a mount point, or the disk is full
    7  the push failed (the local soup is intact; re-run `hf-soups push`)
    8  evaluation data or metric problem
    9  the Hub could not be reached (connection errors or server errors, after retries)
    10 any other hf_soups error, or an operating-system error (never 1, which means "incompatible")
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from .. import errors
from ..constants import VERSION as __version__
from . import diagnose as _diagnose

EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (errors.IncompatibleIngredientsError, 1),
    (errors.IngredientNotFoundError, 3),
    (errors.AuthenticationError, 4),
    (errors.UnsafeCheckpointError, 5),
    (errors.CorruptCheckpointError, 5),
    (errors.NoSafetensorsError, 5),
    (errors.NonFiniteTensorError, 5),
    (errors.OutputExistsError, 6),
    (errors.DiskFullError, 6),
    (errors.OutputNotWritableError, 6),
    (errors.PushError, 7),
    (errors.LabelMismatchError, 8),
    (errors.EvaluationError, 8),
    (errors.InvalidArgumentError, 2),
    (errors.HubConnectionError, 9),
    (errors.SoupError, 10),
]

#: Python argument -> the CLI flag that sets it (errors name the argument; the CLI speaks its flags).
FLAGS: dict[str, str] = {
    "eval_dataset": "--eval-dataset", "overwrite": "--overwrite", "token": "--token", "text_column": "--text-column",
    "label_column": "--label-column", "image_column": "--image-column", "split": "--eval-split", "weights": "--weights",
    "method": "--method", "metric": "--metric", "revision": "--revision", "allow_single": "--allow-single",
    "align_labels": "--align-labels", "allow_pickle": "--allow-pickle", "trust_remote_code": "--trust-remote-code",
    "dtype": "--dtype", "int_rule": "--int-rule", "max_shard_size": "--max-shard-size", "output_dir": "--output",
    "strict": "--strict", "stream": "--stream", "max_samples": "--max-eval-samples",
    "calibration_dataset": "--calibration-dataset", "last": "--last", "top": "--top",
    "greater_is_better": "--greater-is-better", "since_step": "--since-step", "base_model": "--base",
    "collection": "--collection", "as_adapter": "--as-adapter", "rank": "--rank", "base": "--base",
    "threshold": "--threshold",
}

#: The fix in CLI terms, for errors about one argument (a "did you mean ...?" of the error is kept in front).
_CLI_FIXES: dict[str, str] = {
    "eval_dataset": "pass --eval-dataset FILE_OR_ID (a csv/json/parquet file, a save_to_disk directory or a Hub "
                    "dataset id), with --eval-split, --text-column and --label-column as needed.",
    "token": "pass --token hf_..., set HF_TOKEN, or run `hf auth login`.",
    "rank": "pass --as-adapter --rank R (R a positive integer), or neither.",
    "as_adapter": "drop --as-adapter (the soup is then a full model), or soup LoRA adapters only.",
    "base": "pass --base REPO_OR_DIR, the full model the adapters were trained on.",
    "text_column": "pass --text-column NAME with one of the dataset's columns.",
    "label_column": "pass --label-column NAME with one of the dataset's columns.",
    "image_column": "pass --image-column NAME with one of the dataset's columns.",
    "split": "pass --eval-split NAME with one of the dataset's splits.",
    "allow_single": "pass two or more REFs (--allow-single makes a one-ingredient soup, for testing).",
}

#: The argument a whole error class is about, when the error does not say.
_CLASS_PARAMS: list[tuple[type[BaseException], str]] = [(errors.AuthenticationError, "token")]


def cli_fix(error: errors.SoupError) -> str | None:
    """The error's fix in the CLI's language: flags (`--eval-dataset`) instead of keyword arguments."""
    import re

    fix = error.fix
    param = getattr(error, "param", None) or next((p for cls, p in _CLASS_PARAMS if isinstance(error, cls)), None)
    if fix is None:
        return None
    if param in _CLI_FIXES and not (param == "token" and "check the repo id" in fix):
        hint = re.match(r"(did you mean [^?]*\?\s*)", fix, flags=re.IGNORECASE)
        return (hint.group(1) if hint else "") + _CLI_FIXES[param]
    for name, flag in FLAGS.items():
        fix = re.sub(rf"\b{name}=True\b", flag, fix)
        fix = re.sub(rf"\b{name}=['\"]([^'\"]*)['\"]", rf"{flag} \1", fix)
        fix = re.sub(rf"\b{name}=\[\.\.\.\]", f"{flag} W1 W2 ...", fix)
        fix = re.sub(rf"\b{name}=\[([^\]]*)\]", lambda m, f=flag: f"{f} " + m.group(1).replace(",", ""), fix)
        fix = re.sub(rf"\b{name}=(?=[<\w.])", f"{flag} ", fix)
        fix = re.sub(rf"\b{name}=", flag, fix)
    return fix.replace("output_dir", "--output")


def render_error(error: errors.SoupError) -> str:
    """`message` plus `Fix:` in CLI terms (the Python API's `str(error)` names keyword arguments instead)."""
    fix = cli_fix(error)
    saved = error.fix
    error.fix = None
    try:
        text = error._render()
    finally:
        error.fix = saved
    return text + (f" Fix: {fix}" if fix else "")

_EPILOG_SOUP = """examples:
  hf-soups soup user/ft-1 user/ft-2 user/ft-3 --output soup/
  hf-soups soup user/ft-1@v1 user/ft-2 --method weighted --weights 0.7 0.3 --output soup/ --push-to user/my-soup
  hf-soups soup user/ft-{1..6} --method greedy --eval-dataset val.csv --text-column sentence --output soup/
  hf-soups soup user/convnet-{1..3} --method greedy --eval-dataset ./val_images/ --recompute-batchnorm \
      --calibration-dataset ./calibration_images/ --calibration-batches 8 --output soup/
"""


def _run_refs(args: argparse.Namespace) -> Any:
    """With --last/--top: the one RUN's chosen checkpoints (a `RunCheckpoints`); else the refs as given."""
    if args.last is None and args.top is None:
        if args.since_step is not None or args.greater_is_better:
            raise errors.InvalidArgumentError("--since-step and --greater-is-better choose checkpoints of a run.",
                                              fix="add --last N or --top N with one RUN.")
        return args.refs
    if len(args.refs) != 1:
        raise errors.InvalidArgumentError(f"--last/--top take one RUN (a Trainer output_dir or Hub repo), got "
                                          f"{len(args.refs)} REFs.", fix="pass one RUN, or drop --last/--top.")
    from ..runs import run_checkpoints

    chosen = run_checkpoints(args.refs[0], last=args.last, top=args.top, metric=args.metric or "eval_loss",
                             greater_is_better=args.greater_is_better, since_step=args.since_step,
                             revision=args.revision, token=args.token)
    print(chosen.to_table(), file=sys.stderr)
    return chosen


@dataclass(frozen=True)
class Flag:
    """One row of the CLI's flag table.

    Attributes:
        names (`tuple[str, ...]`): `("--output",)`, or a positional's name.
        commands (`tuple[str, ...]`): the subcommands that take it.
        help (`str` or `dict[str, str]`): its help, or one per subcommand where the meaning narrows.
        options (`dict`): the rest of `add_argument`'s keywords (`type`, `default`, `action`, `metavar`, ...).
    """

    names: tuple[str, ...]
    commands: tuple[str, ...]
    help: str | dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)

    def help_for(self, command: str) -> str:
        return self.help if isinstance(self.help, str) else self.help[command]


_REFS_HELP = "repo id, repo@revision, local checkpoint directory, or @FILE (one ref per line)"
_ALL = ("check", "soup", "find", "push", "recipe", "diagnose")


def _method_help() -> str:
    from ..recipes import METHODS

    return "the soup method: " + ", ".join(METHODS) + " (each described under 'methods:' below)"


def _methods_epilog() -> str:
    """The soup command's "methods:" list, from the registry: each method, its description and its paper."""
    from ..recipes import METHODS

    return "\nmethods:\n" + "".join(
        f"  {m.name}: {m.description}" + (" Needs --eval-dataset." if m.needs_eval else "")
        + (" Needs --base." if m.needs.base else "") + f"\n      paper: {m.paper}\n" for m in METHODS.values())


#: Every flag of every subcommand, once: argparse is built from this table (in this order).
FLAG_TABLE: tuple[Flag, ...] = (
    Flag(("refs",), ("check", "soup", "diagnose"), _REFS_HELP, {"nargs": "+", "metavar": "REF"}),
    Flag(("directory",), ("push",), "a soup directory written by hf-soups", {"metavar": "DIR"}),
    Flag(("repo_id",), ("push",), "target repo id, created when missing", {"metavar": "REPO"}),
    Flag(("source",), ("recipe",), "a recipe YAML file, a soup directory, a soup's README.md, or a soup repo id",
         {"metavar": "RECIPE"}),
    Flag(("--json",), ("check", "find", "diagnose"), {"check": "print the report as JSON", "find": "print the result as "
                                                      "JSON", "diagnose": "print the diagnosis as JSON"},
         {"action": "store_true"}),
    Flag(("--method",), ("soup",), "", {"default": "uniform"}),  # choices and help: the registry, when built
    Flag(("--weights",), ("soup",), "one weight per REF (--method weighted)",
         {"nargs": "+", "type": float, "default": None}),
    Flag(("--eval-dataset",), ("soup", "diagnose"),
         "held-out data: a csv/json/parquet file, a save_to_disk directory, or a Hub dataset id. Images: a "
         "save_to_disk folder or parquet file with an Image column, an imagefolder (one sub-folder of images per "
         "class; classes are matched to id2label by name), a csv whose image column holds image file paths, or a Hub "
         "dataset id with --eval-split", {"default": None}),
    Flag(("--eval-split",), ("soup", "diagnose"), "split of --eval-dataset (Hub datasets and DatasetDicts)",
         {"default": None, "metavar": "SPLIT"}),
    Flag(("--max-eval-samples",), ("soup", "diagnose"), "evaluate only the first N examples of --eval-dataset",
         {"type": int, "default": None, "metavar": "N"}),
    Flag(("--text-column",), ("soup", "diagnose"),
         "text column (default: text or sentence); twice for a sentence pair (--text-column sentence1 --text-column "
         "sentence2; GLUE pairs are found by name) or extractive QA (question, context); token classification: the "
         "word-list column (default: tokens)", {"default": None, "action": "append"}),
    Flag(("--label-column",), ("soup", "diagnose"), "label column (default: label; token classification: ner_tags; QA: answers)",
         {"default": None}),
    Flag(("--threshold",), ("soup",),
         "multi-label models: sigmoid probability of a positive label (default 0.5, recorded)",
         {"type": float, "default": None}),
    Flag(("--image-column",), ("soup",), "image column (default: image or img)", {"default": None}),
    Flag(("--last",), ("check", "soup"),
         "REF is a Trainer run (output_dir or Hub repo): its last N checkpoints, in step order",
         {"type": int, "default": None, "metavar": "N"}),
    Flag(("--top",), ("check", "soup"),
         "REF is a Trainer run: its N best checkpoints by --metric (default eval_loss) from trainer_state.json",
         {"type": int, "default": None, "metavar": "N"}),
    Flag(("--greater-is-better",), ("check", "soup"),
         "with --top: a larger --metric is better (default: lower for *loss, else higher)",
         {"action": "store_true", "default": None}),
    Flag(("--since-step",), ("check", "soup"), "with --last/--top: only checkpoints saved at STEP or later",
         {"type": int, "default": None, "metavar": "STEP"}),
    Flag(("--metric",), ("check", "soup", "diagnose"),
         {"check": "with --top: the logged metric to rank by (default eval_loss)",
          "soup": "an evaluate metric name or local metric script directory (default: accuracy); with --top, also "
                  "the logged metric to rank the run's checkpoints by (default: eval_loss)",
          "diagnose": "the metric of the interpolation curves (default: accuracy)"}, {"default": None}),
    Flag(("--strict",), ("soup",), "greedy accepts only strict improvements (>)", {"action": "store_true"}),
    Flag(("--eval-device",), ("soup",),
         "where held-out evaluations run, e.g. cuda:1 or cpu (default: the accelerate launch rank's device, else "
         "cuda/mps when available, else cpu)", {"default": None, "metavar": "DEVICE"}),
    Flag(("--eval-dtype",), ("soup",), "evaluate under autocast in this dtype (default: exact float32)",
         {"default": None, "choices": ["bfloat16", "float16"]}),
    Flag(("--recompute-batchnorm",), ("soup",),
         "after averaging, recompute BatchNorm statistics on --calibration-dataset (recorded in the recipe and "
         "replayed by `hf-soups recipe`); without it, --eval-dataset is reused and the card flags that the "
         "calibration data also chose the weights", {"action": "store_true"}),
    Flag(("--calibration-dataset",), ("soup", "recipe"),
         {"soup": "calibration images for --recompute-batchnorm (same forms as --eval-dataset)",
          "recipe": "the BatchNorm calibration data, when the recipe recomputed statistics on a dataset it does not "
                    "record (a save_to_disk folder, parquet/csv file, imagefolder or Hub id)"},
         {"default": None, "metavar": "DATA"}),
    Flag(("--calibration-split",), ("soup", "recipe"), "split of --calibration-dataset", {"default": None}),
    Flag(("--calibration-batches",), ("soup",),
         "recompute on a seeded sample of N batches (default: every calibration example)",
         {"type": int, "default": None, "metavar": "N"}),
    Flag(("--calibration-batch-size",), ("soup",), "examples per calibration batch (default: 64)",
         {"type": int, "default": 64, "metavar": "B"}),
    Flag(("--output",), ("soup", "recipe"), "directory to write the soup to", {"required": True, "metavar": "DIR"}),
    Flag(("--overwrite",), ("soup", "recipe"), "replace a soup hf-soups wrote at --output", {"action": "store_true"}),
    Flag(("--push-to",), ("soup", "recipe"),
         {"soup": "push the soup to this Hub repo", "recipe": "push the re-created soup to this repo"},
         {"default": None, "metavar": "REPO"}),
    Flag(("--private",), ("soup", "push", "recipe"),
         {"soup": "create the --push-to repo as private", "push": "create the repo as private",
          "recipe": "create the --push-to repo as private"}, {"action": "store_true"}),
    Flag(("--stream",), ("soup",), "read Hub weights by HTTP ranges, never downloading them", {"action": "store_true"}),
    Flag(("--dtype",), ("soup",), "output dtype (default: the ingredients')",
         {"default": None, "choices": ["float32", "bfloat16", "float16"]}),
    Flag(("--int-rule",), ("soup",), "how differing integer buffers are resolved (never averaged)",
         {"default": "first", "choices": ["first", "max", "error"]}),
    Flag(("--max-shard-size",), ("soup",), "largest output shard (default: 5GB)", {"default": "5GB"}),
    Flag(("--trust-remote-code",), ("soup", "diagnose"), "accept configs that need repository code", {"action": "store_true"}),
    Flag(("--allow-single",), ("soup",), "accept a single REF (a 'soup' identical to it, for testing pipelines)",
         {"action": "store_true"}),
    Flag(("--base",), ("check", "soup", "find", "diagnose"),
         {"check": "the base model of LoRA adapter REFs, instead of each adapter's base_model_name_or_path",
          "soup": "the pretrained checkpoint the REFs were fine-tuned from (LoRA adapters: instead of each adapter's "
                  "base_model_name_or_path), pinned to a sha and recorded in the recipe and card",
          "find": "the base model the fine-tunes declare in their card (base_model: REPO)",
          "diagnose": "the pretrained checkpoint the REFs were fine-tuned from: adds task-vector cosines"},
         {"default": None, "metavar": "REPO"}),
    Flag(("--as-adapter",), ("soup",),
         "write the soup of LoRA adapters as one LoRA adapter of rank --rank (truncated SVD)",
         {"action": "store_true"}),
    Flag(("--rank",), ("soup",), "the rank of the --as-adapter output", {"type": int, "default": None, "metavar": "R"}),
    Flag(("--author",), ("find",), "only repos of this user or organisation", {"default": None}),
    Flag(("--task",), ("find",), "only this pipeline tag, e.g. text-classification", {"default": None}),
    Flag(("--search",), ("find",), "only repo ids containing this string", {"default": None}),
    Flag(("--collection",), ("find",), "check the models of this collection", {"default": None, "metavar": "SLUG"}),
    Flag(("--limit",), ("find",), "list at most N candidates", {"type": int, "default": None, "metavar": "N"}),
    Flag(("--write-refs",), ("find",), "write the compatible refs, pinned to their sha, for `hf-soups soup @FILE`",
         {"default": None, "metavar": "FILE"}),
    Flag(("--adapters",), ("find",), "list the base's LoRA adapters as ingredients too (read as their merged weights)",
         {"action": "store_true"}),
    Flag(("--max-workers",), ("find",), "repos checked at the same time (default: 8)",
         {"type": int, "default": 8, "metavar": "N"}),
    Flag(("--commit-message",), ("push",), "commit message", {"default": None}),
    Flag(("--branch",), ("push",), "branch to push to (created when missing)", {"default": None}),
    Flag(("--allow-local-ingredients",), ("recipe",),
         "accept local directories among the recipe's ingredients (only for recipes you wrote; by default only Hub "
         "repos pinned to full commit shas are replayed)", {"action": "store_true"}),
    Flag(("--revision",), ("check", "soup", "diagnose"), "revision (branch, tag or sha) for refs without their own @rev",
         {"default": None}),
    Flag(("--token",), _ALL,
         {"check": "Hub token (defaults to HF_TOKEN or the saved login); never printed",
          "soup": "Hub token (defaults to HF_TOKEN or the saved login); never printed",
          "find": "Hub token for private or gated repos; never printed", "push": "Hub write token; never printed",
          "recipe": "Hub token; never printed", "diagnose": "Hub token; never printed"}, {"default": None}),
    Flag(("--align-labels",), ("check", "soup", "find"),
         {"check": "accept id2label permutations by permuting classifier rows",
          "soup": "accept id2label permutations by permuting classifier rows",
          "find": "accept id2label permutations"}, {"action": "store_true"}),
    Flag(("--allow-pickle",), ("check", "soup", "diagnose"),
         "accept pytorch_model.bin ingredients, loaded with torch.load(weights_only=True)", {"action": "store_true"}),
    Flag(("--plot",), ("diagnose",), "write the curves and the cosine heatmap to this PNG",
         {"default": None, "metavar": "PNG"}),
    Flag(("--debug",), _ALL, "show full tracebacks on errors", {"action": "store_true"}),
)

#: A flag a user is likely to try -> the flag (or setting) that says it.
WRONG_FLAGS: dict[str, str] = {
    "--split": "--eval-split (the held-out split; --calibration-split for the BatchNorm data)",
    "--dataset": "--eval-dataset", "--eval-data": "--eval-dataset", "--val": "--eval-dataset",
    "--max-samples": "--max-eval-samples", "--eval-samples": "--max-eval-samples",
    "--eval-metric": "--metric", "--output-dir": "--output", "--out": "--output", "-o": "--output",
    "--base-model": "--base", "--push": "--push-to", "--repo-id": "--push-to", "--hub-token": "--token",
    "--hf-token": "--token", "--endpoint": "the HF_ENDPOINT environment variable",
    "--cache-dir": "the HF_HUB_CACHE environment variable", "--device": "--eval-device (where evaluations run)",
    "--batchnorm": "--recompute-batchnorm", "--adapter-rank": "--rank", "--lora-rank": "--rank",
}

_COMMAND_HELP: dict[str, dict[str, Any]] = {
    "check": {"help": "print the compatibility verdict (exit 0 if compatible, 1 if not)",
              "epilog": "example:\n  hf-soups check user/ft-1 user/ft-2@v2 ./local-ft-3\n"},
    "soup": {"help": "make a soup from two or more fine-tunes", "epilog": None},  # _EPILOG_SOUP, set below
    "find": {"help": "find fine-tunes of a base model (or a collection) on the Hub and check them (exit 0 if at "
                     "least two are compatible, 1 if not)",
             "epilog": "examples:\n  hf-soups find --base org/base --author me --write-refs refs.txt\n"
                       "  hf-soups soup @refs.txt --method greedy --eval-dataset val.csv --output soup/\n"
                       "  hf-soups find --collection user/my-sweep-64f9a55bb3115b4f513ec026 --json\n"},
    "push": {"help": "upload a soup directory to the Hub in one commit",
             "epilog": "example:\n  hf-soups push soup/ user/my-soup --private\n"},
    "recipe": {"help": "re-create a soup bit for bit from its recipe",
               "epilog": "examples:\n  hf-soups recipe recipe.yaml --output soup/\n"
                         "  hf-soups recipe old-soup/ --output soup/      # reads old-soup/recipe.yaml\n"
                         "  hf-soups recipe user/my-soup --output soup/   # reads the recipe from the card\n"},
    "diagnose": {"help": "tell whether fine-tunes share a basin (distances, task-vector cosines, interpolation "
                         "curves)", "epilog": "examples:\n  hf-soups diagnose user/ft-1 user/ft-2 --base org/base\n"
                                             "  hf-soups diagnose ./ft-* --eval-dataset val.csv --plot basin.png\n"},
}


def build_parser() -> argparse.ArgumentParser:
    """The `hf-soups` parser, built from [`FLAG_TABLE`]: each flag is declared once, for the subcommands it serves."""
    from ..recipes import method_names

    parser = argparse.ArgumentParser(
        prog="hf-soups", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Model soups for the Hugging Face Hub: check, soup, push and replay fine-tunes of one base model.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _ALL:
        about = _COMMAND_HELP[command]
        p = sub.add_parser(command, help=about["help"], formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_EPILOG_SOUP + _methods_epilog() if command == "soup" else about["epilog"])
        for flag in FLAG_TABLE:
            if command not in flag.commands:
                continue
            options = dict(flag.options)
            if flag.names == ("--method",):
                options["choices"] = list(method_names())
                help_text = _method_help()
            else:
                help_text = flag.help_for(command)
            if flag.names == ("--base",) and command == "find":
                options["dest"] = "base_model"  # find_ingredients' filter, named as list_models names it
            p.add_argument(*flag.names, help=help_text, **options)
        p.set_defaults(command_parser=p)
    return parser


def unknown_flag(command: str, flag: str) -> errors.UnknownArgumentError:
    """The error for a flag `command` does not take: the flag that says it, the subcommands that take it, or the
    closest of `command`'s own flags.

    Args:
        command (`str`): the subcommand.
        flag (`str`): the unrecognised argument, as typed (`--split`, `--split=validation`).

    Returns:
        [`UnknownArgumentError`]: to report (exit code 2).
    """
    import difflib

    name = flag.split("=", 1)[0]
    own = [n for f in FLAG_TABLE if command in f.commands for n in f.names if n.startswith("-")]
    elsewhere = [f.commands for f in FLAG_TABLE if name in f.names]
    if name in WRONG_FLAGS and not (name == "--device" and command != "soup"):
        fix = f"use {WRONG_FLAGS[name]}."
    elif elsewhere:
        fix = f"{name} is a flag of `hf-soups {' / '.join(elsewhere[0])}`; see `hf-soups {command} --help`."
    else:
        close = difflib.get_close_matches(name, own, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]}?" if close else f"see `hf-soups {command} --help` for its flags."
    return errors.UnknownArgumentError(f"`hf-soups {command}` has no flag {name}.", fix=fix)


def _prefetch_architectures(refs: Sequence[str]) -> None:
    """Before torch is imported: start building the architecture check's expectations for local refs whose
    architecture is not cached yet, in a helper process that runs beside this one (`architecture.prefetch`)."""
    if os.environ.get("LOCAL_RANK", "0") != "0":  # under `accelerate launch`, one helper per machine
        return
    from ..architecture import prefetch

    dirs = [os.path.expanduser(r) for r in refs]
    prefetch([os.path.join(d, "config.json") for d in dirs if os.path.isdir(d)])


def _cmd_check(args: argparse.Namespace) -> int:
    refs = _run_refs(args)
    _prefetch_architectures([getattr(r, "local_dir", r) for r in refs])
    from ..api import check_compatibility

    report = check_compatibility(refs, revision=args.revision, token=args.token, align_labels=args.align_labels,
                                 allow_pickle=args.allow_pickle, base=args.base)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_table())
    return 0 if report.compatible else 1


def _cmd_find(args: argparse.Namespace) -> int:
    from ..hub.discovery import find_ingredients

    if not any((args.base_model, args.author, args.task, args.search, args.collection)):
        args.command_parser.error("say what to look for: --base, --collection, --author, --task or --search.")
    if args.write_refs:
        _check_write_refs(args.write_refs)  # before any request: a bad path fails now, not after the listing
    found = find_ingredients(args.base_model, author=args.author, task=args.task, search=args.search,
                             collection=args.collection, limit=args.limit, align_labels=args.align_labels,
                             token=args.token, max_workers=args.max_workers, adapters=args.adapters)
    print(json.dumps(found.to_dict(), indent=2) if args.json else found.to_table())
    if args.write_refs:
        try:
            args.progress.watch(args.write_refs, "the refs")
            found.write_refs(args.write_refs)
        except OSError as e:
            with contextlib.suppress(OSError):  # write_refs writes PATH.tmp-<pid>, then renames it onto PATH
                os.unlink(f"{args.write_refs}.tmp-{os.getpid()}")
            raise errors.OutputNotWritableError(f"cannot write the refs file ({e.strerror}).", file=args.write_refs,
                                                fix="pass --write-refs with a writable file path.") from None
        print(f"Wrote {len(found.refs)} refs to {args.write_refs}", file=sys.stderr)
    return 0 if len(found.ingredients) >= 2 else 1


def _expand_ref_files(refs: Sequence[str]) -> list[str]:
    """`@FILE` stands for the refs listed in FILE (one per line, `#` comments), as `find --write-refs` writes.

    FILE must be a regular UTF-8 text file of at most `read_refs`'s size cap; it cannot name other `@FILE`s.
    """
    if not any(r.startswith("@") for r in refs):
        return list(refs)
    from ..hub.discovery import read_refs

    expanded = []
    for ref in refs:
        if not ref.startswith("@"):
            expanded.append(ref)
            continue
        if not ref[1:].strip():
            raise errors.InvalidArgumentError(f"'{ref}' names no refs file.",
                                              fix="write @FILE, FILE being a text file with one ref per line.")
        expanded.extend(read_refs(os.path.expanduser(ref[1:])))
    return expanded


def _check_write_refs(path: str) -> None:
    """Refuse a `--write-refs` path that cannot become a regular file, before any listing is made."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise errors.InvalidArgumentError(f"--write-refs: the folder '{parent}' does not exist.", file=path,
                                              fix="create the folder first, or pass another --write-refs FILE.")
        return
    except OSError as e:
        raise errors.InvalidArgumentError(f"--write-refs cannot be checked ({e.strerror}).", file=path,
                                          fix="pass --write-refs with a file path you can write.") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise errors.InvalidArgumentError(f"--write-refs names {what}.", file=path,
                                          fix="pass --write-refs with a file path, such as refs.txt.")


def _print_soup(soup: Any) -> None:
    print(f"Soup written to {soup.output_dir} ({soup.method}, {len(soup.ingredients)} ingredients)")
    for ing in soup.ingredients:
        score = f", held-out {ing.score:.4f}" if ing.score is not None else ""
        print(f"  {ing.name}: weight {ing.weight:.4f}{score}")


def _cmd_soup(args: argparse.Namespace) -> int:
    refs = _run_refs(args)
    _prefetch_architectures([getattr(r, "local_dir", r) for r in refs])
    from ..api import soup_from_hub
    from ..hub.access import HubAccess
    from ..merge.options import MergeOptions
    from ..recipes import EvalSpec

    eval_dataset = None  # soup_from_hub loads the spec's dataset (file or Hub id) and checks it before any download
    text_column = args.text_column[0] if args.text_column and len(args.text_column) == 1 else \
        tuple(args.text_column) if args.text_column else None
    spec = EvalSpec(dataset=args.eval_dataset, split=args.eval_split, metric=args.metric or "accuracy",
                    text_column=text_column, label_column=args.label_column, image_column=args.image_column,
                    strict=args.strict, device=args.eval_device, dtype=args.eval_dtype,
                    max_samples=args.max_eval_samples, threshold=args.threshold)
    calibration = _calibration_source(args)  # flag errors before any download

    options = MergeOptions(dtype=args.dtype, int_rule=args.int_rule, align_labels=args.align_labels,
                           max_shard_size=args.max_shard_size, stream=args.stream)
    if (args.as_adapter and (args.rank is None or args.rank < 1)) or (args.rank is not None and not args.as_adapter):
        raise errors.InvalidArgumentError("--as-adapter writes an adapter of rank --rank: pass both, or neither.",
                                          fix="pass --as-adapter --rank R.", param="rank")
    soup = soup_from_hub(
        refs, method=args.method, weights=args.weights, output_dir=args.output, access=HubAccess(token=args.token),
        revision=args.revision, eval_dataset=eval_dataset, eval_spec=spec, merge_options=options,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, overwrite=args.overwrite,
        allow_single=args.allow_single, base=args.base, as_adapter=args.rank if args.as_adapter else None,
    )
    from ..evaluation.distributed import is_main_process

    if not is_main_process():  # under `accelerate launch`, the main process reports and pushes
        return 0
    progress: _Progress = args.progress
    if calibration is not None:
        progress.recomputing = progress.identity(args.output)
        soup = soup.recompute_batchnorm(calibration, split=args.calibration_split or args.eval_split,
                                             num_batches=args.calibration_batches, batch_size=args.calibration_batch_size,
                                        image_column=args.image_column)
        progress.recomputing = None
        print(f"Recomputed the statistics of {soup.batchnorm_layers} BatchNorm layers on {calibration}")
    _print_soup(soup)
    _push_soup(soup, args)
    return 0


def _push_soup(soup: Any, args: argparse.Namespace) -> None:
    """`--push-to`: push the soup just written, recording the push's progress for an interruption's message."""
    if not args.push_to:
        return
    progress: _Progress = args.progress
    progress.push = "started"
    info = soup.push_to_hub(args.push_to, private=args.private or None, token=args.token)
    progress.push = "done"
    print(f"Pushed to {args.push_to}: {info.commit_url}")


def _calibration_source(args: argparse.Namespace) -> str | None:
    """The --recompute-batchnorm data: --calibration-dataset, else --eval-dataset (reuse flagged)."""
    if not args.recompute_batchnorm:
        if args.calibration_dataset is not None:
            raise errors.InvalidArgumentError("--calibration-dataset is given without --recompute-batchnorm.",
                                              fix="add --recompute-batchnorm, or drop --calibration-dataset.")
        return None
    if args.calibration_dataset is not None:
        return args.calibration_dataset
    if args.eval_dataset is None:
        raise errors.InvalidArgumentError("--recompute-batchnorm needs calibration images.",
                                          fix="pass --calibration-dataset DATA (images not used for reporting).")
    print("hf-soups: warning: --recompute-batchnorm without --calibration-dataset reuses --eval-dataset; the card "
          "flags that the calibration data also chose the weights.", file=sys.stderr)
    return args.eval_dataset


def _cmd_push(args: argparse.Namespace) -> int:
    from ..hub import push_folder

    if not os.path.isfile(os.path.join(args.directory, "config.json")):
        raise errors.IngredientNotFoundError("not a soup directory (no config.json).", file=args.directory,
                                             fix="pass the --output directory of `hf-soups soup`.")
    _retarget_card(args.directory, args.repo_id)
    args.progress.push = "started"
    info = push_folder(args.directory, args.repo_id, token=args.token, private=args.private or None,
                       commit_message=args.commit_message, revision=args.branch)
    args.progress.push = "done"
    print(f"Pushed {args.directory} to {args.repo_id}: {info.commit_url}")
    return 0


def _retarget_card(directory: str, repo_id: str) -> None:
    """Re-render a soup's card for the repo it is pushed to (title, replay command, loading snippet)."""
    path = os.path.join(directory, "README.md")
    if not os.path.isfile(path):
        return
    from huggingface_hub import ModelCard

    from ..atomic_file import write_atomic
    from ..card import is_soup_card, retarget_card
    from ..checkpoint.meta import read_config

    card = ModelCard.load(path)
    if not is_soup_card(card):  # not hf_soups' card: the user's own, pushed as it is
        return
    text = str(retarget_card(card, repo_id, read_config(os.path.join(directory, "config.json"), directory)))
    write_atomic(path, text)


def _cmd_recipe(args: argparse.Namespace) -> int:
    from ..api import load_recipe, replay_recipe
    from ..hub.access import HubAccess

    recipe = load_recipe(args.source, token=args.token)
    calibration = args.calibration_dataset
    if calibration is not None and args.calibration_split is not None:
        from ..evaluation.data import load_eval_dataset

        calibration = load_eval_dataset(calibration, args.calibration_split)
    soup = replay_recipe(recipe, output_dir=args.output, access=HubAccess(token=args.token), overwrite=args.overwrite,
                         allow_local=args.allow_local_ingredients, calibration_dataset=calibration)
    _print_soup(soup)
    _push_soup(soup, args)
    return 0


_COMMANDS = {"check": _cmd_check, "soup": _cmd_soup, "find": _cmd_find, "push": _cmd_push, "recipe": _cmd_recipe,
             "diagnose": _diagnose.run}


class _Progress:
    """What a run has committed so far: an interruption reports it in one line.

    Each path the command may write (the soup's `--output`, `--write-refs`) is watched by its identity (device,
    inode) at the start: hf_soups replaces them only by a rename, so a new identity means the write was committed.
    """

    def __init__(self) -> None:
        self.watched: list[tuple[str, str, tuple[int, int] | None]] = []  # (path, what, identity at the start)
        self.push_to: str | None = None
        self.push_source: str | None = None
        self.push: str | None = None  # None (not started), "started" or "done"
        self.recomputing: tuple[int, int] | None = None  # the soup's identity while BatchNorm is recomputed

    @staticmethod
    def identity(path: str) -> tuple[int, int] | None:
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def watch(self, path: str, what: str) -> None:
        if all(p != path for p, _, _ in self.watched):
            self.watched.append((path, what, self.identity(path)))

    def line(self) -> str:
        """The one line an interruption prints: what was committed, and what was not."""
        done, notes = [], []
        for path, what, before in self.watched:
            now = self.identity(path)
            if now is not None and now != before:
                done.append(f"{what} {'was' if what.startswith('the soup') else 'were'} written to {path}")
                if what.startswith("the soup") and self.recomputing is not None and now == self.recomputing:
                    notes.append("its BatchNorm statistics were not recomputed")
            elif now is None and before is not None:
                notes.append(f"the previous {what.removeprefix('the ')} at {path} was left beside it as a hidden "
                             f"'.hf-soups-old-' folder, which the next run with the same --output puts back")
        if self.push_to is not None:
            where = f"{self.push_source} to {self.push_to}" if self.push_source else self.push_to
            if self.push == "done":
                done.append(f"pushed to {self.push_to}")
            elif self.push == "started":
                notes.append(f"the push of {where} was cut short, so the Hub repo may lack this commit; run "
                             f"`hf-soups push {self.push_source or '<output>'} {self.push_to}` to push it again")
            else:
                notes.append("nothing was pushed")
        if done:
            return "; ".join([f"interrupted after {' and '.join(done)}", *notes])
        if notes == ["nothing was pushed"]:
            return "interrupted: nothing was " + ("written" if self.watched else "pushed")
        if self.watched or not notes:
            return "; ".join(["interrupted: nothing was written", *notes])
        return "interrupted: " + "; ".join(notes)


class _Interrupts:
    """SIGINT during one CLI run: the first one raises `KeyboardInterrupt` (`main` prints what was committed and
    returns 130); when `hf-soups` is the process (`main()` without `argv`), a second one while the first unwinds,
    and any one after `main` has returned (threads joined and exit hooks run at interpreter exit), print that line
    and end the process at once with 130, never a traceback, never exit 0. A SIGINT the parent set to be ignored
    stays ignored."""

    def __init__(self, progress: _Progress, own_process: bool) -> None:
        self.progress = progress
        self.own_process = own_process
        self.previous: Any = None
        self.installed = False
        self.count = 0
        self.reported = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is signal.SIG_IGN:
            return
        signal.signal(signal.SIGINT, self._during)
        self.installed = True

    def _during(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count > 1 and self.own_process:
            self._exit_now()
        raise KeyboardInterrupt

    def _after(self, signum: int, frame: FrameType | None) -> None:
        self._exit_now()

    def report(self) -> None:
        """Print the line once (a further SIGINT meanwhile is ignored)."""
        if self.installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not self.reported:
            self.reported = True
            try:
                line = self.progress.line()
            except Exception:  # the report must never raise
                line = "interrupted"
            with contextlib.suppress(Exception):
                print(f"hf-soups: {line}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        """The command is over: own process, a SIGINT from now to exit ends it with the line; else restore."""
        if not self.installed:
            return
        signal.signal(signal.SIGINT, self._after if self.own_process else self.previous)

    def _exit_now(self) -> NoReturn:
        self.report()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of a flag the subcommand does not take (one line naming the flag that
    says it: `--split` -> `--eval-split`)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    flags = [e for e in extras if e.startswith("-")]
    if flags:
        error = unknown_flag(args.command, flags[0])
        print(f"hf-soups {args.command}: error: {render_error(error)}", file=sys.stderr)
        return next(c for cls, c in EXIT_CODES if isinstance(error, cls))
    if extras:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _run(argv: Sequence[str] | None, progress: _Progress) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    args.progress = progress
    if args.command in ("soup", "recipe"):
        progress.watch(args.output, "the soup")
    push_to = args.repo_id if args.command == "push" else getattr(args, "push_to", None)
    if push_to:
        progress.push_to = push_to
        progress.push_source = args.directory if args.command == "push" else args.output
    try:
        if getattr(args, "refs", None):
            args.refs = _expand_ref_files(args.refs)
        return _COMMANDS[args.command](args)
    except errors.SoupError as e:
        if args.debug:
            raise
        code = next(c for cls, c in EXIT_CODES if isinstance(e, cls))
        first, *rest = render_error(e).split("\n")
        print(f"hf-soups: error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return code
    except OSError as e:  # not an hf_soups error: still a one-line message and a code that cannot mean "incompatible"
        if args.debug:
            raise
        print(f"hf-soups: error: {e}", file=sys.stderr)
        return 10


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hf-soups` and `python -m hf_soups`; returns the exit code.

    Args:
        argv (`Sequence[str]`, *optional*): the arguments; `None` (the console script) reads `sys.argv` and also
            makes this process's interpreter exit interruptible only with exit code 130 and one line.

    Returns:
        `int`: the exit code (see the module's docstring); 130 when interrupted (SIGINT), with one line on stderr
        saying what was written or pushed before the interruption.
    """
    progress = _Progress()
    interrupts = _Interrupts(progress, own_process=argv is None)
    interrupts.install()
    try:
        code = _run(argv, progress)
        interrupts.finish()
        return code
    except KeyboardInterrupt:
        interrupts.report()
        interrupts.finish()
        return 130
    except BaseException:  # SystemExit from argparse (usage, --help), or an error shown with --debug
        interrupts.finish()
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
