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
from types import FrameType
from typing import Any, NoReturn

from .. import errors
from ..constants import VERSION as __version__

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
    "label_column": "--label-column", "image_column": "--image-column", "split": "--split", "weights": "--weights",
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
                    "dataset id), with --split, --text-column and --label-column as needed.",
    "token": "pass --token hf_..., set HF_TOKEN, or run `hf auth login`.",
    "rank": "pass --as-adapter --rank R (R a positive integer), or neither.",
    "as_adapter": "drop --as-adapter (the soup is then a full model), or soup LoRA adapters only.",
    "base": "pass --base REPO_OR_DIR, the full model the adapters were trained on.",
    "text_column": "pass --text-column NAME with one of the dataset's columns.",
    "label_column": "pass --label-column NAME with one of the dataset's columns.",
    "image_column": "pass --image-column NAME with one of the dataset's columns.",
    "split": "pass --split NAME with one of the dataset's splits.",
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


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None, help="revision (branch, tag or sha) for refs without their own @rev")
    p.add_argument("--token", default=None, help="Hub token (defaults to HF_TOKEN or the saved login); never printed")
    p.add_argument("--align-labels", action="store_true",
                   help="accept id2label permutations by permuting classifier rows")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pytorch_model.bin ingredients, loaded with torch.load(weights_only=True)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _add_base_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, metavar="REPO",
                   help="the base model of LoRA adapter REFs (default: each adapter's base_model_name_or_path)")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """`REF` is one Trainer run (an output_dir or a Hub repo) whose checkpoints are chosen by these flags."""
    p.add_argument("--last", type=int, default=None, metavar="N",
                   help="REF is a Trainer run (output_dir or Hub repo): its last N checkpoints, in step order")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="REF is a Trainer run: its N best checkpoints by --metric (default eval_loss) from "
                        "trainer_state.json")
    p.add_argument("--greater-is-better", action="store_true", default=None,
                   help="with --top: a larger --metric is better (default: lower for *loss, else higher)")
    p.add_argument("--since-step", type=int, default=None, metavar="STEP",
                   help="with --last/--top: only checkpoints saved at STEP or later")


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


def build_parser() -> argparse.ArgumentParser:
    from ..recipes import METHODS, method_names

    parser = argparse.ArgumentParser(
        prog="hf-soups", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Model soups for the Hugging Face Hub: check, soup, push and replay fine-tunes of one base model.",
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="print the compatibility verdict (exit 0 if compatible, 1 if not)",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="example:\n  hf-soups check user/ft-1 user/ft-2@v2 ./local-ft-3\n")
    check.add_argument("refs", nargs="+", metavar="REF",
                       help="repo id, repo@revision, local checkpoint directory, or @FILE (one ref per line)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--metric", default=None, help="with --top: the logged metric to rank by (default eval_loss)")
    _add_base_flag(check)
    _add_run_flags(check)
    _add_common(check)

    soup = sub.add_parser("soup", help="make a soup from two or more fine-tunes",
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG_SOUP)
    soup.add_argument("refs", nargs="+", metavar="REF",
                      help="repo id, repo@revision, local checkpoint directory, or @FILE (one ref per line)")
    soup.add_argument("--method", choices=list(method_names()), default="uniform",
                      help="; ".join(f"{m.name}: {m.description}" + (" Needs --eval-dataset." if m.needs_eval else "")
                                     for m in METHODS.values()).replace("%", "%%"))
    soup.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per REF (--method weighted)")
    soup.add_argument("--eval-dataset", default=None,
                      help="held-out data: a csv/json/parquet file, a save_to_disk directory, or a Hub dataset id. "
                           "Images: a save_to_disk folder or parquet file with an Image column, an imagefolder "
                           "(one sub-folder of images per class; classes are matched to id2label by name), a csv "
                           "whose image column holds image file paths, or a Hub dataset id with --split")
    soup.add_argument("--split", default=None, help="dataset split (Hub datasets and DatasetDicts)")
    soup.add_argument("--max-eval-samples", type=int, default=None, metavar="N",
                      help="evaluate only the first N examples of --eval-dataset")
    soup.add_argument("--text-column", default=None, action="append",
                      help="text column (default: text or sentence); twice for a sentence pair (--text-column "
                           "sentence1 --text-column sentence2; GLUE pairs are found by name) or extractive QA "
                           "(question, context); token classification: the word-list column (default: tokens)")
    soup.add_argument("--label-column", default=None,
                      help="label column (default: label; token classification: ner_tags; QA: answers)")
    soup.add_argument("--threshold", type=float, default=None,
                      help="multi-label models: sigmoid probability of a positive label (default 0.5, recorded)")
    soup.add_argument("--image-column", default=None, help="image column (default: image or img)")
    _add_run_flags(soup)
    soup.add_argument("--metric", default=None,
                      help="an evaluate metric name or local metric script directory (default: accuracy); with "
                           "--top, also the logged metric to rank the run's checkpoints by (default: eval_loss)")
    soup.add_argument("--strict", action="store_true", help="greedy accepts only strict improvements (>)")
    soup.add_argument("--eval-device", default=None, metavar="DEVICE",
                      help="where held-out evaluations run, e.g. cuda:1 or cpu (default: the accelerate launch rank's "
                           "device, else cuda/mps when available, else cpu)")
    soup.add_argument("--eval-dtype", default=None, choices=["bfloat16", "float16"],
                      help="evaluate under autocast in this dtype (default: exact float32)")
    soup.add_argument("--recompute-batchnorm", action="store_true",
                      help="after averaging, recompute BatchNorm statistics on --calibration-dataset (recorded in the "
                           "recipe and replayed by `hf-soups recipe`); without it, --eval-dataset is reused and the "
                           "card flags that the calibration data also chose the weights")
    soup.add_argument("--calibration-dataset", default=None, metavar="DATA",
                      help="calibration images for --recompute-batchnorm (same forms as --eval-dataset)")
    soup.add_argument("--calibration-split", default=None, help="split of --calibration-dataset")
    soup.add_argument("--calibration-batches", type=int, default=None, metavar="N",
                      help="recompute on a seeded sample of N batches (default: every calibration example)")
    soup.add_argument("--calibration-batch-size", type=int, default=64, metavar="B",
                      help="examples per calibration batch (default: 64)")
    soup.add_argument("--output", required=True, metavar="DIR", help="directory to write the soup to")
    soup.add_argument("--overwrite", action="store_true", help="replace a soup hf-soups wrote at --output")
    soup.add_argument("--push-to", default=None, metavar="REPO", help="push the soup to this Hub repo")
    soup.add_argument("--private", action="store_true", help="create the --push-to repo as private")
    soup.add_argument("--stream", action="store_true", help="read Hub weights by HTTP ranges, never downloading them")
    soup.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                      help="output dtype (default: the ingredients')")
    soup.add_argument("--int-rule", default="first", choices=["first", "max", "error"],
                      help="how differing integer buffers are resolved (never averaged)")
    soup.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: 5GB)")
    soup.add_argument("--trust-remote-code", action="store_true", help="accept configs that need repository code")
    soup.add_argument("--allow-single", action="store_true",
                      help="accept a single REF (a 'soup' identical to it, for testing pipelines)")
    _add_base_flag(soup)
    soup.add_argument("--as-adapter", action="store_true",
                      help="write the soup of LoRA adapters as one LoRA adapter of rank --rank (truncated SVD)")
    soup.add_argument("--rank", type=int, default=None, metavar="R", help="the rank of the --as-adapter output")
    _add_common(soup)

    find = sub.add_parser("find", help="find fine-tunes of a base model (or a collection) on the Hub and check them "
                          "(exit 0 if at least two are compatible, 1 if not)",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="examples:\n  hf-soups find --base org/base --author me --write-refs refs.txt\n"
                                 "  hf-soups soup @refs.txt --method greedy --eval-dataset val.csv --output soup/\n"
                                 "  hf-soups find --collection user/my-sweep-64f9a55bb3115b4f513ec026 --json\n")
    find.add_argument("--base", dest="base_model", default=None, metavar="REPO",
                      help="the base model the fine-tunes declare in their card (base_model: REPO)")
    find.add_argument("--author", default=None, help="only repos of this user or organisation")
    find.add_argument("--task", default=None, help="only this pipeline tag, e.g. text-classification")
    find.add_argument("--search", default=None, help="only repo ids containing this string")
    find.add_argument("--collection", default=None, metavar="SLUG", help="check the models of this collection")
    find.add_argument("--limit", type=int, default=None, metavar="N", help="list at most N candidates")
    find.add_argument("--write-refs", default=None, metavar="FILE",
                      help="write the compatible refs, pinned to their sha, for `hf-soups soup @FILE`")
    find.add_argument("--json", action="store_true", help="print the result as JSON")
    find.add_argument("--adapters", action="store_true",
                      help="list the base's LoRA adapters as ingredients too (read as their merged weights)")
    find.add_argument("--align-labels", action="store_true", help="accept id2label permutations")
    find.add_argument("--max-workers", type=int, default=8, metavar="N",
                      help="repos checked at the same time (default: 8)")
    find.add_argument("--token", default=None, help="Hub token for private or gated repos; never printed")
    find.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    find.set_defaults(find_parser=find)

    push = sub.add_parser("push", help="upload a soup directory to the Hub in one commit",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="example:\n  hf-soups push soup/ user/my-soup --private\n")
    push.add_argument("directory", metavar="DIR", help="a soup directory written by hf-soups")
    push.add_argument("repo_id", metavar="REPO", help="target repo id, created when missing")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", default=None, help="Hub write token; never printed")
    push.add_argument("--commit-message", default=None, help="commit message")
    push.add_argument("--branch", default=None, help="branch to push to (created when missing)")
    push.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    recipe = sub.add_parser("recipe", help="re-create a soup bit for bit from its recipe",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="examples:\n  hf-soups recipe recipe.yaml --output soup/\n"
                                   "  hf-soups recipe old-soup/ --output soup/      # reads old-soup/recipe.yaml\n"
                                   "  hf-soups recipe user/my-soup --output soup/   # reads the recipe from the card\n")
    recipe.add_argument("source", metavar="RECIPE",
                        help="a recipe YAML file, a soup directory, a soup's README.md, or a soup repo id")
    recipe.add_argument("--output", required=True, metavar="DIR", help="directory to write the soup to")
    recipe.add_argument("--overwrite", action="store_true", help="replace a soup hf-soups wrote at --output")
    recipe.add_argument("--push-to", default=None, metavar="REPO", help="push the re-created soup to this repo")
    recipe.add_argument("--private", action="store_true", help="create the --push-to repo as private")
    recipe.add_argument("--token", default=None, help="Hub token; never printed")
    recipe.add_argument("--allow-local-ingredients", action="store_true",
                        help="accept local directories among the recipe's ingredients (only for recipes you wrote; "
                             "by default only Hub repos pinned to full commit shas are replayed)")
    recipe.add_argument("--calibration-dataset", default=None, metavar="DATA",
                        help="the BatchNorm calibration data, when the recipe recomputed statistics on a dataset it "
                             "does not record (a save_to_disk folder, parquet/csv file, imagefolder or Hub id)")
    recipe.add_argument("--calibration-split", default=None, help="split of --calibration-dataset")
    recipe.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


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
        args.find_parser.error("say what to look for: --base, --collection, --author, --task or --search.")
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
    from ..merge.options import MergeOptions
    from ..recipes import EvalSpec

    eval_dataset = None  # soup_from_hub loads the spec's dataset (file or Hub id) and checks it before any download
    text_column = args.text_column[0] if args.text_column and len(args.text_column) == 1 else \
        tuple(args.text_column) if args.text_column else None
    spec = EvalSpec(dataset=args.eval_dataset, split=args.split, metric=args.metric or "accuracy", text_column=text_column,
                    label_column=args.label_column, image_column=args.image_column, strict=args.strict,
                    device=args.eval_device, dtype=args.eval_dtype, max_samples=args.max_eval_samples,
                    threshold=args.threshold)
    calibration = _calibration_source(args)  # flag errors before any download

    options = MergeOptions(dtype=args.dtype, int_rule=args.int_rule, align_labels=args.align_labels,
                           max_shard_size=args.max_shard_size, stream=args.stream)
    soup = soup_from_hub(
        refs, method=args.method, weights=args.weights, output_dir=args.output, token=args.token,
        revision=args.revision, eval_dataset=eval_dataset, eval_spec=spec, merge_options=options,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, overwrite=args.overwrite,
        allow_single=args.allow_single, base=args.base, as_adapter=args.as_adapter, rank=args.rank,
    )
    from ..evaluation.distributed import is_main_process

    if not is_main_process():  # under `accelerate launch`, the main process reports and pushes
        return 0
    progress: _Progress = args.progress
    if calibration is not None:
        progress.recomputing = progress.identity(args.output)
        layers = soup.recompute_batchnorm(calibration, split=args.calibration_split or args.split,
                                          num_batches=args.calibration_batches, batch_size=args.calibration_batch_size,
                                          image_column=args.image_column)
        progress.recomputing = None
        print(f"Recomputed the statistics of {layers} BatchNorm layers on {calibration}")
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

    recipe = load_recipe(args.source, token=args.token)
    calibration = args.calibration_dataset
    if calibration is not None and args.calibration_split is not None:
        from ..evaluation.data import load_eval_dataset

        calibration = load_eval_dataset(calibration, args.calibration_split)
    soup = replay_recipe(recipe, output_dir=args.output, token=args.token, overwrite=args.overwrite,
                         allow_local=args.allow_local_ingredients, calibration_dataset=calibration)
    _print_soup(soup)
    _push_soup(soup, args)
    return 0


_COMMANDS = {"check": _cmd_check, "soup": _cmd_soup, "find": _cmd_find, "push": _cmd_push, "recipe": _cmd_recipe}


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


def _run(argv: Sequence[str] | None, progress: _Progress) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
