"""Heads the card knows but held-out evaluation does not score (`evaluates = False`): their pipeline tag, Auto class
and pipeline class, so the task registry stays the package's one architecture -> task table. Registered after the
evaluated tasks."""

from __future__ import annotations

from .base import Task, register_task

__all__ = ["CausalLM", "MaskedLM", "Seq2SeqLM", "AudioClassification"]


class _CardOnly(Task):
    """A head named in cards and listings only: [`task_for`] never returns it."""

    evaluates = False


@register_task
class CausalLM(_CardOnly):
    name, title = "causal_lm", "causal language modelling"
    architectures = ("ForCausalLM",)
    pipeline_tag, auto_class, pipeline_class = "text-generation", "AutoModelForCausalLM", "TextGenerationPipeline"


@register_task
class MaskedLM(_CardOnly):
    name, title = "masked_lm", "masked language modelling"
    architectures = ("ForMaskedLM",)
    pipeline_tag, auto_class, pipeline_class = "fill-mask", "AutoModelForMaskedLM", "FillMaskPipeline"


@register_task
class Seq2SeqLM(_CardOnly):
    name, title = "seq2seq", "sequence-to-sequence generation"
    architectures = ("ForConditionalGeneration",)
    pipeline_tag, auto_class, pipeline_class = ("text2text-generation", "AutoModelForSeq2SeqLM",
                                                "Text2TextGenerationPipeline")


@register_task
class AudioClassification(_CardOnly):
    name, title = "audio", "audio classification"
    architectures = ("ForAudioClassification",)
    pipeline_tag, auto_class, pipeline_class = ("audio-classification", "AutoModelForAudioClassification",
                                                "AudioClassificationPipeline")
