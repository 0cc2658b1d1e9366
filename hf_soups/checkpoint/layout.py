"""Checkpoint layouts: the one place that says which files hold an ingredient's weights and which companion files go
with them, for a local folder, a Hub listing and a stream alike.

A layout names its weight files (a safetensors file, its shard index, and the pickled forms read only with
`allow_pickle`), the file that marks it, the small files read beside the weights and the files that are never read.
The readers (`checkpoint/reader.py`, `checkpoint/adapter.py`), the Hub client (`hub/client.py`: what the verdict reads
and what is downloaded), the stream (`hub/stream.py`) and the Trainer-run reader (`runs/`) ask the layouts here
instead of naming files. A new ingredient kind is one more [`Layout`] passed to [`register_layout`].

No torch and no I/O here: a layout answers from a listing (a collection of names) or a `present(name)` test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from .. import constants

__all__ = [
    "Layout", "WeightFiles", "FULL_MODEL", "ADAPTER", "TRAINER_CHECKPOINT", "LAYOUTS", "register_layout",
    "download_patterns", "is_adapter_listing", "SAFETENSORS_SINGLE", "SAFETENSORS_INDEX", "PICKLE_SINGLE",
    "PICKLE_INDEX", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ADAPTER_PICKLE", "TRAINER_STATE", "CHECKPOINT_RE",
    "TRAINING_STATE_PATTERNS", "CARD",
]

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
TRAINER_STATE = "trainer_state.json"
CARD = "README.md"
#: A Trainer checkpoint folder: `checkpoint-<global step>`.
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Files of a Trainer checkpoint folder that are never read, downloaded or carried into a soup.
TRAINING_STATE_PATTERNS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                           "training_args.bin", TRAINER_STATE, "*.distcp", "pytorch_model_fsdp*",
                           "optimizer_*", "global_step*", "zero_to_fp32.py", "latest")


@dataclass(frozen=True)
class WeightFiles:
    """The weight file a layout found in one listing.

    Attributes:
        layout (`str`): the layout's name.
        file (`str`): the file to open first: the shard index when `index`, else the one weight file.
        index (`bool`): `file` is a shard index naming the weight files.
        pickled (`bool`): the weights are pickled (read only with `allow_pickle`, through `torch.load(weights_only)`).
    """

    layout: str
    file: str
    index: bool
    pickled: bool


@dataclass(frozen=True)
class Layout:
    """Which files of a folder (or repo) hold one kind of ingredient's weights and companions.

    Attributes:
        name (`str`): the kind, e.g. `"model"`, `"adapter"`.
        safetensors (`str`, *optional*): the single safetensors weight file.
        safetensors_index (`str`, *optional*): the safetensors shard index (preferred over `safetensors`).
        pickle (`str`, *optional*): the single pickled weight file (only with `allow_pickle`).
        pickle_index (`str`, *optional*): the pickled shard index (preferred over `pickle`).
        shard_glob (`str`, *optional*): the weight files downloaded with a sharded or single safetensors checkpoint
            (the shards' names are known only once the index is read); `None`: the named files only.
        pickle_glob (`str`, *optional*): the same for pickled weights.
        marker (`str`, *optional*): a companion that marks the kind (an adapter's `adapter_config.json`); it is read
            and downloaded with the small files.
        state (`str`, *optional*): a file read for metadata only (a Trainer checkpoint's `trainer_state.json`): parsed
            as JSON, never copied into a soup.
        never_read (`tuple[str, ...]`): glob patterns of files that are never read or downloaded.
        folder (`re.Pattern`, *optional*): the name of the sub-folder the layout lives in (a Trainer checkpoint's
            `checkpoint-<step>`); `None`: the ingredient's own folder or repo root.
    """

    name: str
    safetensors: str | None = None
    safetensors_index: str | None = None
    pickle: str | None = None
    pickle_index: str | None = None
    shard_glob: str | None = None
    pickle_glob: str | None = None
    marker: str | None = None
    state: str | None = None
    never_read: tuple[str, ...] = ()
    folder: re.Pattern[str] | None = None

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Every weight file name the layout knows: safetensors, its index, the pickle, its index (in that order)."""
        return tuple(n for n in (self.safetensors, self.safetensors_index, self.pickle, self.pickle_index) if n)

    def find(self, present: Callable[[str], bool] | Collection[str]) -> WeightFiles | None:
        """The weight file to open: the safetensors index, else the safetensors file, else the pickled index, else
        the pickle (whether pickles may be read is the caller's decision, so that it can name them in its error).

        Args:
            present (`Callable[[str], bool]` or a collection of names): whether a file exists (a local test such as
                `os.path.lexists`), or the listing itself.

        Returns:
            [`WeightFiles`] or `None`: `None` when none of the layout's weight files is there.
        """
        has = present if callable(present) else present.__contains__
        for file, index, pickled in ((self.safetensors_index, True, False), (self.safetensors, False, False),
                                     (self.pickle_index, True, True), (self.pickle, False, True)):
            if file is not None and has(file):
                return WeightFiles(self.name, file, index, pickled)
        return None

    def is_safetensors_weight(self, name: str) -> bool:
        """Whether a file name is one of the layout's safetensors weight files (a shard included)."""
        return name == self.safetensors or (self.shard_glob is not None and fnmatchcase(name, self.shard_glob))

    def has_safetensors(self, files: Collection[str]) -> bool:
        """Whether a listing holds the layout's safetensors weights (or their index)."""
        return any(n is not None and n in files for n in (self.safetensors_index, self.safetensors))

    def has_pickle(self, files: Collection[str]) -> bool:
        """Whether a listing holds pickled weight files of the layout."""
        if self.pickle_glob is not None:
            return any(fnmatchcase(f, self.pickle_glob) for f in files)
        return any(n is not None and n in files for n in (self.pickle_index, self.pickle))

    def weight_patterns(self, files: Collection[str], *, allow_pickle: bool = False) -> list[str]:
        """The weight files of a listing to download: the safetensors ones when there are any, else (only with
        `allow_pickle`) the pickled ones."""
        if self.has_safetensors(files):
            if self.shard_glob is not None:
                return [f for f in files if fnmatchcase(f, self.shard_glob) or f == self.safetensors_index]
            return [n for n in (self.safetensors_index, self.safetensors) if n is not None and n in files]
        if not allow_pickle:
            return []
        if self.pickle_glob is not None:
            return [f for f in files if fnmatchcase(f, self.pickle_glob) or f == self.pickle_index]
        return [n for n in (self.pickle_index, self.pickle) if n is not None and n in files]


#: A transformers checkpoint written by `save_pretrained`: `model.safetensors` or its shards and index; pickled
#: `pytorch_model.bin` (or its shards and index) only with `allow_pickle`.
FULL_MODEL = Layout("model", safetensors=SAFETENSORS_SINGLE, safetensors_index=SAFETENSORS_INDEX,
                    pickle=PICKLE_SINGLE, pickle_index=PICKLE_INDEX, shard_glob="*.safetensors",
                    pickle_glob="pytorch_model*.bin")
#: A PEFT LoRA adapter: `adapter_config.json` and `adapter_model.safetensors` (`adapter_model.bin` with
#: `allow_pickle`); the base model's weights come from the base, a full-model layout of its own.
ADAPTER = Layout("adapter", safetensors=ADAPTER_WEIGHTS, pickle=ADAPTER_PICKLE, marker=ADAPTER_CONFIG)
#: A Trainer `checkpoint-<step>/` folder: a full model's weight files, `trainer_state.json` read for metrics only;
#: the optimizer, scheduler, RNG and training-argument files are never read.
TRAINER_CHECKPOINT = replace(FULL_MODEL, name="trainer_checkpoint", state=TRAINER_STATE,
                             never_read=TRAINING_STATE_PATTERNS, folder=CHECKPOINT_RE)

#: The registered layouts, by name.
LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout) -> Layout:
    """Register a layout (one new ingredient kind); its weight files and marker join what is downloaded.

    Raises:
        `ValueError`: a layout of that name is already registered.
    """
    if layout.name in LAYOUTS:
        raise ValueError(f"a checkpoint layout named {layout.name!r} is already registered.")
    LAYOUTS[layout.name] = layout
    return layout


for _layout in (FULL_MODEL, ADAPTER, TRAINER_CHECKPOINT):
    register_layout(_layout)


def download_patterns(files: Collection[str], *, weights: bool = True, allow_pickle: bool = False) -> list[str]:
    """The files of a repo worth downloading: the companions (config, tokenizer and processor files, card, each
    layout's marker) and, with `weights`, every root layout's weight files.

    Args:
        files (`Collection[str]`): the repo's file names.
        weights (`bool`, *optional*, defaults to `True`): include the weight files.
        allow_pickle (`bool`, *optional*, defaults to `False`): include pickled weights where there are no
            safetensors ones.

    Returns:
        `list[str]`: the names, sorted.
    """
    roots = [layout for layout in LAYOUTS.values() if layout.folder is None]
    wanted = {*constants.AUX_FILES, CARD, *(layout.marker for layout in roots if layout.marker)}
    patterns = [f for f in files if f in wanted]
    if weights:
        for layout in roots:
            patterns += layout.weight_patterns(files, allow_pickle=allow_pickle)
    return sorted(set(patterns))


def is_adapter_listing(files: Collection[str]) -> bool:
    """Whether a folder's (or repo's) file names are a PEFT adapter's: its marker and no full-model weights."""
    names = set(files)
    return ADAPTER.marker in names and not names.intersection(FULL_MODEL.weight_names)
