"""A Trainer run's checkpoint folders: their names, the files never read, the weight files, one [`RunCheckpoint`],
and the refusal of unconsolidated folders. A leaf of `hf_soups.runs`, shared by its local and Hub readers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..checkpoint.layout import ADAPTER_WEIGHTS, CHECKPOINT_RE, TRAINER_CHECKPOINT
from ..errors import SoupError
from ..refs import IngredientRef

__all__ = ["CHECKPOINT_RE", "TRAINING_STATE_PATTERNS", "RunCheckpoint", "consolidation_problem"]

_STATE_LIMIT = 64 << 20  # a trainer_state.json larger than 64 MB is refused
#: The step in the commit messages of `hub_strategy="every_save"` pushes ("Training in progress, step 800").
_STEP_IN_MESSAGE = re.compile(r"\bstep (\d+)\b", re.IGNORECASE)
#: The files of a checkpoint folder (`checkpoint/layout.py`): its weights, and the training state never read.
TRAINING_STATE_PATTERNS = TRAINER_CHECKPOINT.never_read
_WEIGHT_FILES = TRAINER_CHECKPOINT.weight_names


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run.

    Attributes:
        step (`int`): the global step it was saved at.
        name (`str`): how the soup names it: `checkpoint-800` (relative to a local run), `user/run@<sha>` (an
            every_save commit) or `user/run@<sha>/checkpoint-800` (a folder of a Hub run).
        local_dir (`str`, *optional*): its directory on disk (local runs, downloaded Hub folders).
        repo_id (`str`, *optional*), sha (`str`, *optional*): its Hub repo and pinned commit.
        value (`float`, *optional*): the metric logged at its step, when the run evaluated there.
    """

    step: int
    name: str
    local_dir: str | None = None
    repo_id: str | None = None
    sha: str | None = None
    value: float | None = None

    @property
    def ref(self) -> IngredientRef | str:
        """What [`soup_from_hub`] takes: a pinned `repo@sha`, or a local directory under the run-relative name."""
        if self.local_dir is not None:
            return IngredientRef(ref=self.name, local_dir=self.local_dir)
        return f"{self.repo_id}@{self.sha}"


def consolidation_problem(entries: Sequence[str], name: str) -> None:
    """Refuse a checkpoint folder (its top-level `entries`) without consolidated weights: FSDP sharded state, or
    DeepSpeed ZeRO shards (the fix names the consolidation command).

    Raises:
        [`SoupError`]: the folder holds no `model.safetensors` (or pickled) weights.
    """
    if TRAINER_CHECKPOINT.find(entries) is not None:
        return
    if any(e.startswith("pytorch_model_fsdp") or e.endswith(".distcp") for e in entries):
        shard = next((e for e in entries if e.startswith("pytorch_model_fsdp")), "pytorch_model_fsdp_0")
        raise SoupError("holds FSDP sharded-state weights, not consolidated ones: a soup averages full tensors.",
                        ingredient=name, fix=f"consolidate it first: `accelerate merge-weights {name}/{shard} {name}` "
                        "(or train with fsdp_state_dict_type FULL_STATE_DICT).")
    if any(e.startswith("global_step") for e in entries):
        raise SoupError("holds DeepSpeed ZeRO shards, not consolidated weights: a soup averages full tensors.",
                        ingredient=name, fix=f"consolidate it first: `python {name}/zero_to_fp32.py {name} {name} "
                        "--safe_serialization` (or set stage3_gather_16bit_weights_on_model_save: true).")
    if ADAPTER_WEIGHTS in entries:
        raise SoupError("holds a PEFT adapter only, not full weights.", ingredient=name,
                        fix="merge each checkpoint's adapter into the base (peft's merge_and_unload()) and save it.")
    raise SoupError("holds no model weights (model.safetensors).", ingredient=name,
                    fix="pass a Trainer run folder whose checkpoint-* folders hold model.safetensors.")


def _global_step(path: str) -> int:
    """The `global_step` of a `trainer_state.json`, -1 when it names none (or is larger than 64 MB: never read)."""
    try:
        if os.path.getsize(path) > _STATE_LIMIT:
            return -1
        with open(path, encoding="utf-8") as f:
            step = json.load(f).get("global_step", -1)
        return step if type(step) is int else -1
    except (OSError, ValueError, AttributeError, RecursionError):
        return -1
