"""Soups of one training run: the last or the best checkpoints of a `transformers.Trainer` run, on disk or on the Hub.

[`run_checkpoints`] reads a run and returns a [`RunCheckpoints`], a [`CandidateSet`] that [`soup_from_hub`] and
[`check_compatibility`] accept. Three layouts are read:

- a local Trainer `output_dir` with `checkpoint-<step>/` folders;
- a Hub repo with `checkpoint-<step>/` folders (`hub_strategy="all_checkpoints"`): the chosen folders' model files
  are downloaded at one pinned commit;
- a Hub repo pushed with `hub_strategy="every_save"`: every commit that changed the weights is a checkpoint, pinned
  to its sha, its step read from the commit message (`"Training in progress, step 800"`) or that commit's
  `trainer_state.json`.

Metrics come from the `log_history` of the run's newest `trainer_state.json` (JSON, read, never copied). Optimizer,
scheduler and RNG states and `training_args.bin` (a pickle) are never read: only model files are.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..checkpoint.layout import TRAINER_STATE
from ..errors import InvalidArgumentError, SoupError
from ..hub.discovery import Candidate, CandidateSet, DiscoveryQuery
from ..card import run_sentence
from .folders import (CHECKPOINT_RE, TRAINING_STATE_PATTERNS, RunCheckpoint, _STATE_LIMIT,  # noqa: F401
                      _STEP_IN_MESSAGE, _WEIGHT_FILES, _global_step, consolidation_problem)

__all__ = ["run_checkpoints", "RunCheckpoints", "RunCheckpoint", "read_log_history", "CHECKPOINT_RE"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunCheckpoints(CandidateSet):
    """The checkpoints of one run chosen by [`run_checkpoints`]: a [`CandidateSet`] for [`soup_from_hub`].

    Attributes:
        run (`str`): the run as named in the card (a local run's folder name, or the Hub repo id).
        checkpoints (`tuple[RunCheckpoint, ...]`): the chosen checkpoints, in step order (`last`) or best first
            (`top`).
        skipped (`tuple[RunCheckpoint, ...]`): checkpoints left out because the run did not evaluate at their step.
        rule (`str`): how they were chosen (`"last 3"`, `"top 3 by eval_loss (lower is better)"`).
        metric (`str`): the metric shown and ranked by.
        revision (`str`, *optional*): the Hub commit the run was read at.
    """

    run: str = ""
    checkpoints: tuple[RunCheckpoint, ...] = ()
    skipped: tuple[RunCheckpoint, ...] = ()
    rule: str = ""
    metric: str = "eval_loss"
    revision: str | None = None

    @property
    def refs(self) -> tuple[Any, ...]:  # type: ignore[override]
        """The chosen checkpoints as refs [`soup_from_hub`] takes (local ones keep their run-relative names)."""
        return tuple(c.ref for c in self.checkpoints)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self.refs)

    @property
    def steps(self) -> list[int]:
        """The chosen checkpoints' steps, in the order of `checkpoints`."""
        return [c.step for c in self.checkpoints]

    @property
    def description(self) -> str:
        """One sentence for the card: "Checkpoint soup of one run: steps 800, 900, 1000 of `user/run` (eval_loss
        0.41, 0.40, 0.40); chosen: last 3"."""
        return run_sentence(self.discovery)

    @property
    def discovery(self) -> dict[str, Any]:
        """What the soup's card records: the run, the rule and the chosen steps (never an absolute local path)."""
        return {"run": self.run, "revision": self.revision, "rule": self.rule, "metric": self.metric,
                "steps": self.steps, "values": [c.value for c in self.checkpoints], "date": self.query.date,
                "skipped": [c.step for c in self.skipped]}

    def to_table(self) -> str:
        """A plain-text table of the chosen checkpoints (step, name, metric)."""
        lines = [f"{len(self.checkpoints)} checkpoints of {self.run} ({self.rule})", f"step  {self.metric}  name"]
        lines += [f"{c.step}  {'-' if c.value is None else f'{c.value:.4f}'}  {c.name}" for c in self.checkpoints]
        lines += [f"{c.step}  (skipped: no evaluation at its step)  {c.name}" for c in self.skipped]
        return "\n".join(lines)


def _positive(value: int | None, param: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{param}={value!r}: no checkpoint would be chosen.",
                                   fix=f"pass {param}=N with N >= 1.", param=param)


def lower_is_better(metric: str, greater_is_better: bool | None) -> bool:
    """The Trainer's rule: a metric whose name ends with `loss` is better lower, unless `greater_is_better` says."""
    if greater_is_better is not None:
        return not greater_is_better
    return metric.endswith("loss")


def read_log_history(path: str, source: str) -> list[dict[str, Any]]:
    """The `log_history` of a `trainer_state.json` (parsed as JSON; never executed or copied).

    Raises:
        [`SoupError`]: the file is larger than 64 MB, or not a trainer state.
    """
    if os.path.getsize(path) > _STATE_LIMIT:
        raise SoupError("trainer_state.json is larger than 64 MB.", file=source,
                        fix="pass last=N instead of top=N (the metrics are read from trainer_state.json).")
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        history = state.get("log_history", [])
        if not isinstance(history, list):
            raise TypeError
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):  # untrusted JSON
        raise SoupError("trainer_state.json is not a Trainer state (no log_history list).", file=source,
                        fix="pass last=N instead of top=N, or restore the file the Trainer wrote.") from None
    return [e for e in history if isinstance(e, dict)]


def metric_at_steps(history: Sequence[Mapping[str, Any]], metric: str) -> tuple[str, dict[int, float]]:
    """`{step: value}` of `metric` in a log history (the last value logged at a step wins); accepts `loss` for
    `eval_loss` as the Trainer's `metric_for_best_model` does. Returns the key used and the values."""
    keys = [metric] if metric.startswith("eval_") else [metric, f"eval_{metric}"]
    for key in keys:
        values = {}
        for entry in history:
            value, step = entry.get(key), entry.get("step")
            if type(step) is int and type(value) in (int, float) and math.isfinite(value):  # bools are not steps
                values[step] = float(value)
        if values:
            return key, values
    return metric, {}


def _metric_names(history: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({k for e in history for k, v in e.items() if k.startswith("eval_") and isinstance(v, (int, float))
                   and k not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")})


def run_checkpoints(
    run: str | os.PathLike[str],
    *,
    last: int | None = None,
    top: int | None = None,
    metric: str = "eval_loss",
    greater_is_better: bool | None = None,
    since_step: int | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> RunCheckpoints:
    """Choose checkpoints of one Trainer run to soup: the `last` N in step order, or the `top` N by a logged metric.

    Args:
        run (`str` or `os.PathLike`):
            A local Trainer `output_dir` (with `checkpoint-<step>/` folders), or a Hub repo id (`user/run`,
            `user/run@rev`) holding `checkpoint-<step>/` folders (`hub_strategy="all_checkpoints"`) or pushed with
            `hub_strategy="every_save"` (each commit that changed the weights is a checkpoint).
        last (`int`, *optional*):
            The last N checkpoints, in step order (numeric: `checkpoint-20` before `checkpoint-100`). With `top`, the
            top N are chosen among these.
        top (`int`, *optional*):
            The N best checkpoints by `metric`, best first, from the `log_history` of the run's newest
            `trainer_state.json`. A checkpoint with no evaluation at its step is skipped, with a warning.
        metric (`str`, *optional*, defaults to `"eval_loss"`):
            The logged metric (`"eval_accuracy"`; `"accuracy"` is read as `eval_accuracy`, as the Trainer does).
        greater_is_better (`bool`, *optional*):
            Whether a larger `metric` is better; by default lower is better for a name ending in `loss`.
        since_step (`int`, *optional*):
            Only checkpoints saved at this step or later.
        revision (`str`, *optional*):
            The Hub revision to read the run at (a `@rev` in `run` wins).
        token (`str` or `bool`, *optional*), endpoint, cache_dir (`str`, *optional*):
            Hub token, endpoint and cache directory.

    Returns:
        [`RunCheckpoints`]: pass it to [`soup_from_hub`] or [`check_compatibility`]; its card sentence names the
        steps, the run (relative: never an absolute local path), the metric values and the rule.

    Raises:
        [`InvalidArgumentError`]: `last`, `top` or `since_step` is not a positive integer.
        [`IngredientNotFoundError`]: the run is neither a local directory nor a Hub repo.
        [`SoupError`]: the run has no checkpoint (after `since_step`); `top` was asked and the run logged no
            `metric` at any checkpoint's step (the message lists the metrics it did log); a chosen checkpoint holds
            FSDP or DeepSpeed shards (the fix names the consolidation command).

    Example:
        ```python
        >>> from hf_soups import run_checkpoints, soup_from_hub
        >>> soup = soup_from_hub(run_checkpoints("out/", top=3), output_dir="out/soup")
        ```
    """
    _positive(last, "last")
    _positive(top, "top")
    if since_step is not None and (isinstance(since_step, bool) or not isinstance(since_step, int) or since_step < 0):
        raise InvalidArgumentError(f"since_step={since_step!r} is not a step.", fix="pass since_step=N with N >= 0.",
                                   param="since_step")
    text = os.path.expanduser(os.fspath(run))
    if os.path.isdir(text):
        listed, name, sha = _local_run(text), os.path.basename(os.path.abspath(text)), None
        state = _local_state(text, listed)
    else:
        from .hub import hub_run

        name, sha, listed, state, fetch = hub_run(text, revision=revision, token=token, endpoint=endpoint,
                                                  cache_dir=cache_dir)
    history = None
    if state is not None:
        try:
            history = read_log_history(*state)
        except SoupError as e:
            if top is not None:
                raise
            logger.warning("%s; its metrics are not shown.", e)
    if since_step is not None:
        listed = [c for c in listed if c.step >= since_step]
    if not listed:
        raise SoupError("the run has no checkpoint" + (f" at step {since_step} or later." if since_step else "."),
                        ingredient=name, fix="pass the folder the Trainer saved checkpoint-<step> folders in (save_strategy "
                        "'steps' or 'epoch'), or a Hub repo pushed with hub_strategy 'every_save' or "
                        "'all_checkpoints'" + (", or a smaller since_step." if since_step else "."))
    key, values = metric_at_steps(history or [], metric)
    listed = [RunCheckpoint(c.step, c.name, c.local_dir, c.repo_id, c.sha, values.get(c.step)) for c in listed]
    chosen, skipped, rule = _choose(listed, last=last, top=top, key=key, values=values, history=history,
                                    greater_is_better=greater_is_better, run=name)
    if not (os.path.isdir(text)):
        chosen = fetch(chosen)  # all_checkpoints: the chosen folders' model files; every_save: as they are
    for c in chosen:
        if c.local_dir is not None:
            consolidation_problem(os.listdir(c.local_dir), c.name)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return RunCheckpoints(
        ingredients=tuple(Candidate(c.repo_id or c.name, c.sha) for c in chosen),
        rejected=tuple(Candidate(c.repo_id or c.name, c.sha, "rejected", "no evaluation at its step",
                                 "evaluate at every save (eval_steps = save_steps)") for c in skipped),
        query=DiscoveryQuery(date=date), run=name, checkpoints=tuple(chosen), skipped=tuple(skipped), rule=rule,
        metric=key, revision=sha)


def _choose(listed: list[RunCheckpoint], *, last: int | None, top: int | None, key: str, values: dict[int, float],
            history: list[dict[str, Any]] | None, greater_is_better: bool | None, run: str
            ) -> tuple[list[RunCheckpoint], list[RunCheckpoint], str]:
    listed = sorted(listed, key=lambda c: c.step)
    rule = "all checkpoints"
    if last is not None:
        if last > len(listed):
            logger.warning("run %s has %d checkpoints; last=%d takes them all.", run, len(listed), last)
        listed = listed[-last:]
        rule = f"last {last}"
    if top is None:
        return listed, [], rule
    if history is None:
        raise SoupError("the run has no trainer_state.json, so its checkpoints cannot be ranked.", ingredient=run,
                        fix="pass last=N instead of top=N.")
    skipped = [c for c in listed if c.value is None]
    ranked = [c for c in listed if c.value is not None]
    if not ranked:
        logged = _metric_names(history)
        raise SoupError(f"the run logged no {key} at any checkpoint's step (logged: {', '.join(logged) or 'none'}).",
                        ingredient=run, fix="pass metric= one of the logged metrics, evaluate at every save "
                        "(eval_strategy with eval_steps = save_steps), or pass last=N instead of top=N.")
    for c in skipped:
        logger.warning("%s (step %d) is skipped: the run logged no %s at its step.", c.name, c.step, key)
    lower = lower_is_better(key, greater_is_better)
    ranked.sort(key=lambda c: ((c.value if lower else -c.value), -c.step))  # type: ignore[operator]
    if top > len(ranked):
        logger.warning("run %s has %d evaluated checkpoints; top=%d takes them all.", run, len(ranked), top)
    direction = "lower" if lower else "higher"
    rule = f"top {top} by {key} ({direction} is better)" + (f" among the last {last}" if last is not None else "")
    return ranked[:top], skipped, rule


def _local_run(path: str) -> list[RunCheckpoint]:
    """The run's `checkpoint-<step>` folders, in step order.

    Raises:
        [`SoupError`]: a checkpoint folder is a link that leads outside the run (the Trainer writes none: its
            weights would be souped and named as the run's own), or `path` is itself one checkpoint.
    """
    found = []
    root = os.path.realpath(path)
    if CHECKPOINT_RE.match(os.path.basename(root)) and not any(CHECKPOINT_RE.match(e) for e in os.listdir(path)):
        parent = os.path.dirname(os.path.normpath(os.fspath(path))) or "."
        raise SoupError("is one checkpoint of a run, not a run.", ingredient=os.path.basename(root),
                        fix=f"pass its run folder {parent!r} (the Trainer's output folder, holding the checkpoint-* "
                            "folders).")
    for entry in os.listdir(path):
        m = CHECKPOINT_RE.match(entry)
        if m and os.path.isdir(os.path.join(path, entry)):
            if os.path.islink(os.path.join(path, entry)) or os.path.dirname(
                    os.path.realpath(os.path.join(path, entry))) != root:
                raise SoupError("is a link to another folder (the Trainer writes none): its weights would be souped "
                                "under this checkpoint's name.", ingredient=entry,
                                fix=f"replace the link {entry} by a copy of the checkpoint folder, or pass "
                                    "the checkpoints as separate REFs.")
            found.append(RunCheckpoint(int(m.group(1)), entry, local_dir=os.path.abspath(os.path.join(path, entry))))
    found.sort(key=lambda c: (c.step, c.name))
    for a, b in zip(found, found[1:]):
        if a.step == b.step:  # checkpoint-8 and checkpoint-008: one step souped twice (the Trainer writes no zeros)
            raise SoupError(f"{a.name} and {b.name} are both step {a.step}.", ingredient=b.name,
                            fix=f"remove or rename one of them (the Trainer names it checkpoint-{a.step}).")
    return found


def _local_state(path: str, listed: Sequence[RunCheckpoint]) -> tuple[str, str] | None:
    """The newest `trainer_state.json` (by `global_step`) of the run, the newest checkpoint's or the output_dir's own
    (`trainer.save_state()`), with its name relative to the run."""
    states = [os.path.join(c.local_dir, TRAINER_STATE) for c in listed[-1:] if c.local_dir]
    states.append(os.path.join(path, TRAINER_STATE))
    states = [s for s in states if os.path.isfile(s)]
    if not states:
        return None
    newest = max(states, key=_global_step)
    return newest, os.path.relpath(newest, path)

