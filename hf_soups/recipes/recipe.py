"""The recipe: a frozen, YAML-serialisable record that re-creates a soup exactly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from .. import constants
from ..errors import RecipeError

__all__ = ["Recipe", "EvalSpec"]


@dataclass(frozen=True)
class EvalSpec:
    """Evaluation settings of greedy and learned soups: the single home of everything about held-out scoring.

    Only the fields that decide the result (`dataset`, `split`, `metric`, the columns, `strict`, `learned_steps`) are
    recorded in the recipe; the runtime ones (`batch_size`, `max_memory`, `offload_folder`) are not.

    Args:
        dataset (`str`, *optional*):
            What the held-out data is: a local path (csv/json/parquet/saved dataset) or a Hub dataset id. Recorded in
            the recipe; `soup_from_hub` loads it when no `eval_dataset` is passed.
        split (`str`, *optional*):
            The split, for Hub datasets and saved `DatasetDict`s.
        text_column, label_column, image_column (`str`, *optional*):
            Column names (defaults: `text`/`sentence`, `label`, `image`/`img`).
        metric (`str`, *optional*, defaults to `"accuracy"`):
            An `evaluate` metric name, or a local metric script directory.
        strict (`bool`, *optional*, defaults to `False`):
            Greedy accepts only strict improvements (`>`), instead of the paper's `>=`.
        batch_size (`int`, *optional*, defaults to `64`):
            Evaluation batch size.
        learned_steps (`int`, *optional*, defaults to `30`):
            Optimisation steps of a learned soup.
        max_memory (`dict`, *optional*):
            accelerate's `{device: size}` budget for greedy evaluation of models larger than memory: each candidate
            is streamed to disk and evaluated with `device_map="auto"`, offloading to CPU and `offload_folder`.
        offload_folder (`str`, *optional*):
            Where accelerate offloads weights that do not fit `max_memory`.
    """

    dataset: str | None = None
    split: str | None = None
    metric: Any = "accuracy"
    text_column: str | None = None
    label_column: str | None = None
    image_column: str | None = None
    strict: bool = False
    batch_size: int = field(default=64, metadata={"runtime": True})
    learned_steps: int = 30
    max_memory: dict[Any, Any] | None = field(default=None, metadata={"runtime": True})
    offload_folder: str | None = field(default=None, metadata={"runtime": True})

    @property
    def metric_name(self) -> str:
        """The metric's name (a metric object's `.name`)."""
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "name", "metric")

    def to_dict(self) -> dict[str, Any]:
        """The fields that decide the result, as recorded in a recipe (runtime settings left out)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata.get("runtime")}
        data["metric"] = self.metric_name
        data["dataset"] = self.dataset if self.dataset is not None else "<in-memory dataset>"
        return data


@dataclass(frozen=True)
class Recipe:
    """Everything needed to re-create a soup bit for bit.

    Attributes:
        method (`str`): `"uniform"`, `"weighted"`, `"greedy"` or `"learned"`.
        ingredients (`tuple[str, ...]`): `repo@sha` (or local paths) in input order.
        weights (`tuple[float, ...]`): the final normalised weights, one per ingredient.
        dtype (`str`, *optional*): output dtype override.
        int_rule (`str`): rule for differing integer buffers.
        align_labels (`bool`): classifier rows were permuted to the first ingredient's labels.
        evaluation ([`EvalSpec`], *optional*): the held-out evaluation behind a greedy/learned soup.
        seed (`int`): random seed (learned soups).
        hf_soups_version (`str`): the version that made the soup.
    """

    method: str
    ingredients: tuple[str, ...]
    weights: tuple[float, ...]
    dtype: str | None = None
    int_rule: str = "first"
    align_labels: bool = False
    evaluation: EvalSpec | None = None
    seed: int = 0
    hf_soups_version: str = field(default_factory=lambda: _version())

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["ingredients"] = list(self.ingredients)
        data["weights"] = [float(w) for w in self.weights]
        if self.evaluation is None:
            data.pop("evaluation")
        else:
            data["evaluation"] = self.evaluation.to_dict()
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump({"hf_soups_recipe": self.to_dict()}, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        data = dict(data.get("hf_soups_recipe", data))
        try:
            evaluation = data.pop("evaluation", None)
            return cls(
                method=str(data.pop("method")),
                ingredients=tuple(str(i) for i in data.pop("ingredients")),
                weights=tuple(float(w) for w in data.pop("weights")),
                evaluation=EvalSpec(**evaluation) if evaluation else None,
                **data,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RecipeError(f"malformed recipe ({type(e).__name__}: {e}).",
                              fix="start from the recipe block of a soup's model card.") from None

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"the recipe is not valid YAML ({e}).") from None
        if not isinstance(data, dict):
            raise RecipeError("the recipe must be a YAML mapping.")
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Recipe:
        with open(path, encoding="utf-8") as f:
            return cls.from_yaml(f.read())


def _version() -> str:
    """The installed distribution's version (package metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hf_soups")
    except PackageNotFoundError:
        return constants.VERSION
