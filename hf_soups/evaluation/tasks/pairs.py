"""Sentence pairs for sequence classification and regression: which two columns, as transformers' `run_glue.py`
finds them, and tokenized as `tokenizer(first, second)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import EvaluationError
from ..data import TEXT_COLUMNS, column_values, find_column

__all__ = ["PAIR_COLUMNS", "find_text_columns"]

#: GLUE's sentence-pair column names (`run_glue.py`'s `task_to_keys`): MRPC/RTE/WNLI/STS-B, QNLI, QQP, MNLI.
PAIR_COLUMNS: tuple[tuple[str, str], ...] = (("sentence1", "sentence2"), ("question", "sentence"),
                                            ("question1", "question2"), ("premise", "hypothesis"))


def find_text_columns(columns: Sequence[str], asked: str | tuple[str, ...] | None) -> tuple[str, ...]:
    """The text column, or the two columns of a sentence pair.

    Args:
        columns (`Sequence[str]`): the dataset's columns.
        asked (`str` or `tuple[str, str]`, *optional*): `text_column` as the user gave it.

    Returns:
        `tuple[str, ...]`: one column, or `(first, second)`.

    Raises:
        [`EvaluationError`]: a column is missing; more than two columns are asked for; the dataset holds two GLUE
            pairs; or a single column was asked for whose GLUE partner is present too (the pair would be scored on
            its first sentence alone).
    """
    if isinstance(asked, tuple):
        if len(asked) != 2:
            raise EvaluationError(f"text_column names {len(asked)} columns {list(asked)}; a sentence pair has two "
                                  "(CLI: --text-column FIRST --text-column SECOND).",
                                  fix="pass text_column=('first', 'second') (CLI: --text-column twice).",
                                  param="text_column")
        return tuple(find_column(columns, c, TEXT_COLUMNS, "text") for c in asked)
    present = [p for p in PAIR_COLUMNS if p[0] in columns and p[1] in columns]
    if asked is not None:
        column = find_column(columns, asked, TEXT_COLUMNS, "text")
        partner = next((p for p in present if column in p), None)
        if partner is not None:
            raise EvaluationError(
                f"text_column '{column}' is one sentence of the pair {list(partner)} in the dataset: scoring it alone "
                f"would score a pair model on half its input (CLI: --text-column {partner[0]} --text-column "
                f"{partner[1]}).",
                fix=f"pass text_column={partner!r} (CLI: --text-column {partner[0]} --text-column {partner[1]}), or "
                    f"remove the column '{partner[1] if column == partner[0] else partner[0]}' to score one sentence.",
                param="text_column")
        return (column,)
    if len(present) > 1:
        raise EvaluationError(f"the dataset holds the sentence pairs {[list(p) for p in present]}: which one is the "
                              "model's input is ambiguous (CLI: --text-column FIRST --text-column SECOND).",
                              fix=f"pass text_column={present[0]!r} or text_column={present[1]!r} (CLI: "
                                  "--text-column FIRST --text-column SECOND).", param="text_column")
    if present:
        return present[0]
    return (find_column(columns, None, TEXT_COLUMNS, "text"),)


def texts(dataset: Any, column: str) -> list[str]:
    """The column's values as strings (as the single-sentence path always read them)."""
    return [str(t) for t in column_values(dataset, column)]
