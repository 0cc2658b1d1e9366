"""Token classification (`*ForTokenClassification`), as transformers' `run_ner.py`: word-level CoNLL-style columns,
each word's label on its first sub-token and -100 elsewhere, predictions read back per word; seqeval entity F1 when
the labels are BIO/IOB2/IOBES, token accuracy otherwise; the bootstrap resamples sentences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import EvaluationError
from ..data import column_values, find_column, label_id, model_id2label
from ..metrics import Metric
from . import scores
from .base import (Columns, Prepared, Task, bad_rows, metric, num_labels_of, raise_label_problems, read_column,
                   register_task)
from .text import sorted_batches

__all__ = ["TokenClassification", "TOKEN_COLUMNS", "TAG_COLUMNS", "objects"]

TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "labels", "tags", "pos_tags", "label")


def objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d numpy object array of `values` (lists or strings), indexable by a bootstrap's index arrays."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@register_task
class TokenClassification(Task):
    """Word-level labels of a token classifier (NER, POS)."""

    name = "token"
    title = "token classification"
    architectures = ("ForTokenClassification",)
    pipeline_tag = "token-classification"
    auto_class = "AutoModelForTokenClassification"
    pipeline_class = "TokenClassificationPipeline"
    unit = "sentence"
    columns_help = "--text-column TOKENS (word lists), --label-column TAGS (one label per word)"

    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        if isinstance(asked.text, tuple):
            raise EvaluationError(f"text_column names {len(asked.text)} columns; token classification reads one "
                                  "column of word lists.", fix="pass text_column='tokens' (CLI: --text-column tokens "
                                  "once).", param="text_column")
        return {"text": find_column(columns, asked.text, TOKEN_COLUMNS, "text"),
                "label": find_column(columns, asked.label, TAG_COLUMNS, "label")}

    @property
    def names(self) -> list[str]:
        id2label = model_id2label(self.config)
        return [id2label[i] for i in sorted(id2label)]

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> np.ndarray:
        tokens_col, column = found["text"], found["label"]
        n = num_labels_of(self.config)
        label2id = {v.lower(): i for i, v in enumerate(self.names)}
        expected = (f"a list with one label per word: ids in [0, {n}) or the label names {self.names[:10]}, as long "
                    f"as the row's '{tokens_col}' list")
        words = read_column(raw, tokens_col, name, "a list of words per row")
        bad_words = [(r, w) for r, w in enumerate(words)
                     if not isinstance(w, (list, tuple)) or not all(isinstance(t, str) for t in w)]
        if bad_words:
            raise bad_rows(bad_words, tokens_col, "a list of words (strings) per row", name, param="text_column")
        out, invalid, unknown = [], [], []
        for row, (value, ws) in enumerate(zip(read_column(raw, column, name, expected), words)):
            ids: list[int] = []
            if not isinstance(value, (list, tuple)) or len(value) != len(ws):
                invalid.append((row, value))
            else:
                for v in value:
                    i = label2id.get(v.lower()) if isinstance(v, str) else label_id(v)
                    if i is None and isinstance(v, str):
                        unknown.append((row, v))
                    elif i is None or not 0 <= i < n:
                        invalid.append((row, value))
                        break
                    ids.append(i if i is not None else -1)
            out.append(ids)
        raise_label_problems(invalid, unknown, column, expected, name, f"id2label {self.names}",
                             "re-map the dataset's tags to the model's id2label.")
        return objects(out)

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(reference_dir)
        if not getattr(tokenizer, "is_fast", False):
            raise EvaluationError("token classification needs a fast tokenizer (word_ids) to align word labels.",
                                  fix="save the checkpoint with a fast tokenizer (tokenizer.json).")
        words = [list(w) for w in column_values(raw, found["text"])]
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        width = max((len(ids) for ids in encoded["input_ids"]), default=1)
        targets = torch.full((len(words), width), -100, dtype=torch.long)
        firsts: list[list[int]] = []
        for row in range(len(words)):
            positions = [-1] * len(words[row])
            previous = None
            for pos, word in enumerate(encoded.word_ids(row)):
                if word is not None and word != previous:  # the first sub-token of each word carries its label
                    positions[word] = pos
                    targets[row, pos] = int(references[row][word])
                previous = word
            firsts.append(positions)
        batches = sorted_batches(dict(encoded), tokenizer, batch_size)
        return Prepared(batches, len(words), (width, num_labels_of(self.config)), targets=targets, extra=firsts)

    def predictions(self, logits: torch.Tensor, prepared: Prepared) -> np.ndarray:
        best = logits.argmax(-1)
        fallback = next((i for i, n in enumerate(self.names) if n == "O"), 0)  # words cut by truncation
        return objects([[int(best[row, p]) if p >= 0 else fallback for p in positions]
                        for row, positions in enumerate(prepared.extra)])

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        targets = prepared.targets[idx][:, : output.shape[1]].to(output.device)
        return torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-100)

    def _named(self, rows: Any) -> list[list[str]]:
        names = self.names
        return [[names[int(i)] for i in row] for row in rows]

    def metrics(self) -> dict[str, Metric]:
        accuracy = metric("token_accuracy", scores.token_accuracy, stats=(scores.word_stats, scores.mean_from_stats))
        if not scores.is_bio(self.names):
            return {"token_accuracy": accuracy}
        entity_stats = (lambda p, r: scores.entity_stats(self._named(p), self._named(r)), scores.f1_from_stats)
        return {"seqeval": metric("seqeval", lambda p, r: scores.seqeval_f1(self._named(p), self._named(r)),
                                  stats=entity_stats),
                "token_accuracy": accuracy}

    def evaluate_inputs(self, predictions: Any, references: Any) -> dict[str, Any]:
        return {"predictions": self._named(predictions), "references": self._named(references)}
