"""The recipe: a frozen, YAML-serialisable record that re-creates a soup exactly."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from ..errors import RecipeError

__all__ = ["Recipe", "EvalSpec"]


@dataclass(frozen=True)
class EvalSpec:
    """How held-out scores were computed (greedy and learned soups).

    Attributes:
        dataset (`str`): a local path (csv/json/parquet/saved dataset) or a Hub dataset id.
        split (`str`, *optional*): the split, for Hub datasets and saved `DatasetDict`s.
        metric (`str`): the metric name.
        text_column, label_column, image_column (`str`, *optional*): column names.
        strict (`bool`): greedy accepts only strict improvements.
    """

    dataset: str
    split: str | None = None
    metric: str = "accuracy"
    text_column: str | None = None
    label_column: str | None = None
    image_column: str | None = None
    strict: bool = False


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
        data = asdict(self)
        data["ingredients"] = list(self.ingredients)
        data["weights"] = [float(w) for w in self.weights]
        if self.evaluation is None:
            data.pop("evaluation")
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
    from .. import __version__

    return __version__
