"""Extractive question answering (`*ForQuestionAnswering`), as transformers' `run_qa.py` and `utils_qa.py`: SQuAD
columns, the long-context stride with offsets, n-best span decoding (answers of at most 30 tokens), SQuAD exact match
and F1, span cross-entropy loss; the bootstrap resamples questions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import EvaluationError
from ..data import column_values, find_column
from ..metrics import Metric
from . import scores
from .base import Columns, Prepared, Task, bad_rows, metric, read_column, register_task
from .text import sorted_batches
from .token import objects

__all__ = ["QuestionAnswering", "MAX_ANSWER_LENGTH", "N_BEST", "DOC_STRIDE"]

#: Longest answer in tokens (`run_qa.py`'s `max_answer_length`).
MAX_ANSWER_LENGTH = 30
#: Start and end candidates per feature (`run_qa.py`'s `n_best_size`).
N_BEST = 20
#: Overlap of the windows over a long context (`run_qa.py`'s `doc_stride`), at most a quarter of the window.
DOC_STRIDE = 128
_MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
_EXPECTED = "a SQuAD answers mapping {'text': [str, ...], 'answer_start': [int, ...]} of equal lengths"


@register_task
class QuestionAnswering(Task):
    """SQuAD v1-style extractive QA (every question has an answer in its context)."""

    name = "qa"
    title = "extractive question answering"
    architectures = ("ForQuestionAnswering",)
    pipeline_tag = "question-answering"
    auto_class = "AutoModelForQuestionAnswering"
    pipeline_class = "QuestionAnsweringPipeline"
    unit = "question"
    loss_name = "span cross-entropy"
    columns_help = "--text-column QUESTION --text-column CONTEXT, --label-column ANSWERS"

    def find_columns(self, columns: Sequence[str], asked: Columns) -> dict[str, Any]:
        pair = asked.text if isinstance(asked.text, tuple) else (asked.text, None) if asked.text else (None, None)
        if len(pair) != 2:
            raise EvaluationError(f"text_column names {len(pair)} columns; extractive QA reads a question and a "
                                  "context column.", fix="pass text_column=('question', 'context') (CLI: "
                                  "--text-column question --text-column context).", param="text_column")
        return {"text": (find_column(columns, pair[0], ("question",), "text"),
                         find_column(columns, pair[1], ("context",), "text")),
                "label": find_column(columns, asked.label, ("answers",), "label")}

    def references(self, raw: Any, found: Mapping[str, Any], name: str) -> np.ndarray:
        column = found["label"]
        contexts = read_column(raw, found["text"][1], name, "a context string per row")
        bad_contexts = [(r, c) for r, c in enumerate(contexts) if not isinstance(c, str)]
        if bad_contexts:
            raise bad_rows(bad_contexts, found["text"][1], "a context string per row", name, param="text_column")
        out, invalid = [], []
        for row, (value, context) in enumerate(zip(read_column(raw, column, name, _EXPECTED), contexts)):
            texts = value.get("text") if isinstance(value, Mapping) else None
            starts = value.get("answer_start") if isinstance(value, Mapping) else None
            ok = isinstance(texts, (list, tuple)) and isinstance(starts, (list, tuple)) and texts \
                and len(texts) == len(starts) and all(isinstance(t, str) for t in texts) \
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= len(context) - len(t)
                        for s, t in zip(starts, texts))
            if not ok:
                invalid.append((row, value))
            out.append((list(texts or []), list(starts or [])))
        if invalid:
            raise bad_rows(invalid, column, _EXPECTED + " whose starts lie in the context", name)
        self._starts = [s for _, s in out]
        return objects([t for t, _ in out])

    def prepare(self, dataset: Any, raw: Any, reference_dir: str, found: Mapping[str, Any], references: Any, *,
                batch_size: int, max_length: int) -> Prepared:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(reference_dir)
        if not getattr(tokenizer, "is_fast", False):
            raise EvaluationError("extractive QA needs a fast tokenizer (offset mappings).",
                                  fix="save the checkpoint with a fast tokenizer (tokenizer.json).")
        positions = self.config.get("max_position_embeddings")
        max_length = min(max_length, int(positions)) if isinstance(positions, int) and positions > 0 else max_length
        questions = [str(q).lstrip() for q in column_values(raw, found["text"][0])]
        contexts = [str(c) for c in column_values(raw, found["text"][1])]
        pad_right = getattr(tokenizer, "padding_side", "right") == "right"
        encoded = tokenizer(questions if pad_right else contexts, contexts if pad_right else questions,
                            truncation="only_second" if pad_right else "only_first", max_length=max_length,
                            stride=min(DOC_STRIDE, max_length // 4), return_overflowing_tokens=True,
                            return_offsets_mapping=True)
        context_index = 1 if pad_right else 0
        sample = list(encoded["overflow_to_sample_mapping"])
        offsets, starts, ends = [], [], []
        for f in range(len(sample)):
            seq_ids = encoded.sequence_ids(f)
            spans = [o if seq_ids[k] == context_index else None for k, o in enumerate(encoded["offset_mapping"][f])]
            offsets.append(spans)
            cls = encoded["input_ids"][f].index(tokenizer.cls_token_id) if tokenizer.cls_token_id in \
                encoded["input_ids"][f] else 0
            text, start_char = references[sample[f]][0], self._starts[sample[f]][0]
            end_char = start_char + len(text)
            inside = [k for k, o in enumerate(spans) if o is not None]
            if not inside or spans[inside[0]][0] > start_char or spans[inside[-1]][1] < end_char:
                starts.append(cls)  # the answer is not in this window: the CLS token, as run_qa.py trains
                ends.append(cls)
                continue
            starts.append(next(k for k in inside if spans[k][1] > start_char))
            ends.append(next(k for k in reversed(inside) if spans[k][0] < end_char))
        width = max((len(ids) for ids in encoded["input_ids"]), default=1)
        model_inputs = {k: encoded[k] for k in _MODEL_INPUTS if k in encoded}
        batches = sorted_batches(model_inputs, tokenizer, batch_size)
        targets = torch.tensor([starts, ends], dtype=torch.long).T.reshape(len(sample), 2)
        return Prepared(batches, len(sample), (width, 2), targets=targets,
                        extra={"sample": sample, "offsets": offsets, "contexts": contexts})

    def output(self, model_output: Any) -> torch.Tensor:
        return torch.stack([model_output.start_logits.float(), model_output.end_logits.float()], dim=-1)

    def predictions(self, logits: torch.Tensor, prepared: Prepared) -> np.ndarray:
        """The best span of each question over its features (`utils_qa.postprocess_qa_predictions`, SQuAD v1)."""
        extra = prepared.extra
        best: dict[int, tuple[float, str]] = {}
        for f, example in enumerate(extra["sample"]):
            offsets = extra["offsets"][f]
            start_logits, end_logits = logits[f, : len(offsets), 0], logits[f, : len(offsets), 1]
            top_starts = torch.argsort(start_logits, descending=True, stable=True)[:N_BEST].tolist()
            top_ends = torch.argsort(end_logits, descending=True, stable=True)[:N_BEST].tolist()
            for s in top_starts:
                for e in top_ends:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > MAX_ANSWER_LENGTH:
                        continue
                    score = float(start_logits[s] + end_logits[e])
                    if example not in best or score > best[example][0]:
                        best[example] = (score, extra["contexts"][example][offsets[s][0] : offsets[e][1]])
        return objects([best.get(i, (0.0, ""))[1] for i in range(len(extra["contexts"]))])

    def loss(self, output: torch.Tensor, idx: torch.Tensor, prepared: Prepared) -> torch.Tensor:
        targets = prepared.targets[idx].to(output.device)
        ce = torch.nn.functional.cross_entropy
        return (ce(output[..., 0], targets[:, 0]) + ce(output[..., 1], targets[:, 1])) / 2

    def metrics(self) -> dict[str, Metric]:
        def each(exact: bool) -> tuple[Any, Any]:
            return (lambda p, r: scores.mean_stats(scores.squad_each(p, r, exact)), scores.mean_from_stats)

        return {"squad_f1": metric("squad_f1", scores.squad_f1, stats=each(False)),
                "squad_exact_match": metric("squad_exact_match", scores.squad_exact_match, stats=each(True))}

    def evaluate_inputs(self, predictions: Any, references: Any) -> dict[str, Any]:
        return {"predictions": [{"id": str(i), "prediction_text": str(p)} for i, p in enumerate(predictions)],
                "references": [{"id": str(i), "answers": {"text": list(r), "answer_start": [0] * len(r)}}
                               for i, r in enumerate(references)]}
