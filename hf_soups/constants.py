"""Settings read from the environment. Parsed here, read inside functions so tests can patch them."""

from __future__ import annotations

import os

#: The package version (the installed distribution's metadata is preferred where one is installed).
VERSION = "0.1.0"

#: Largest safetensors JSON header accepted, in bytes: safetensors' own `MAX_HEADER_SIZE` (100,000,000).
MAX_HEADER_SIZE: int = int(os.environ.get("HF_SOUPS_MAX_HEADER_SIZE", 100_000_000))

#: Default largest output shard.
DEFAULT_MAX_SHARD_SIZE: str = os.environ.get("HF_SOUPS_MAX_SHARD_SIZE", "5GB")

#: Retries of an idempotent HTTP range read (5xx, 429, connection dropped mid-body, timeout) before giving up.
HTTP_RETRIES: int = int(os.environ.get("HF_SOUPS_HTTP_RETRIES", 4))

#: First wait between two tries of a range read, in seconds; doubled after each failure, capped at 8 s.
HTTP_BACKOFF: float = float(os.environ.get("HF_SOUPS_HTTP_BACKOFF", 1.0))

#: Timeout of one HTTP range read (connect and each read), in seconds.
HTTP_TIMEOUT: float = float(os.environ.get("HF_SOUPS_HTTP_TIMEOUT", 30.0))

#: Time limit of one request to the Hub's API that hf_soups makes itself (a listing page, a collection), from
#: connecting to the last byte, in seconds (`HF_SOUPS_HUB_TIMEOUT`): a silent or trickling server ends there.
HUB_TIMEOUT: float = float(os.environ.get("HF_SOUPS_HUB_TIMEOUT", 30.0))

#: Total time allowed for one listing (every page, retries included), in seconds (`HF_SOUPS_LISTING_DEADLINE`).
LISTING_DEADLINE: float = float(os.environ.get("HF_SOUPS_LISTING_DEADLINE", 300.0))

#: Most pages of one listing followed before giving up (`HF_SOUPS_LISTING_MAX_PAGES`); the Hub serves up to 1000
#: models a page, so the default allows 200,000 candidates.
LISTING_MAX_PAGES: int = int(os.environ.get("HF_SOUPS_LISTING_MAX_PAGES", 200))

#: Largest answer accepted for one listing page or collection, in bytes (`HF_SOUPS_LISTING_MAX_BYTES`).
LISTING_MAX_BYTES: int = int(os.environ.get("HF_SOUPS_LISTING_MAX_BYTES", 64 * 1024 * 1024))

#: Size of the byte window fetched in one HTTP range request while streaming from the Hub.
STREAM_CHUNK_SIZE: int = int(os.environ.get("HF_SOUPS_STREAM_CHUNK_SIZE", 32 * 1024 * 1024))

#: Files whose content identifies a tokenizer, in order of preference.
TOKENIZER_IDENTITY_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

#: Files that define an image processor; a soup takes them from its lead (highest-weight) ingredient.
PROCESSOR_FILES: tuple[str, ...] = ("preprocessor_config.json", "image_processor_config.json", "processor_config.json")

#: Small files copied into every soup from the first ingredient (the image processor's from the lead), when present.
AUX_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_IDENTITY_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    *PROCESSOR_FILES,
)

#: Relative L2 distance above which an ingredient is flagged as not sharing the others' pretrained init.
INIT_DISTANCE_WARNING: float = float(os.environ.get("HF_SOUPS_INIT_DISTANCE_WARNING", 0.5))


#: Substrings that mark classification-head tensors (their rows follow the label order).
CLASSIFIER_MARKERS: tuple[str, ...] = ("classifier", "score", "head", "logits")

#: Buffers that older transformers versions saved and current ones ignore on load. When only some ingredients have
#: them, the verdict warns and the soup leaves them out (transformers rebuilds them).
LEGACY_POSITION_IDS: str = r"(^|\.)position_ids$"
LEGACY_BUFFER_PATTERNS: tuple[str, ...] = (LEGACY_POSITION_IDS, r"rotary_emb\.inv_freq$", r"\.attn\.(masked_)?bias$")


_LEGACY_LAYER_NORM = ((".gamma", ".weight"), (".beta", ".bias"))


def modern_name(name: str) -> str:
    """The name transformers loads an old-layout LayerNorm tensor as (`...gamma` -> `...weight`, `beta` -> `bias`)."""
    for old, new in _LEGACY_LAYER_NORM:
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def is_legacy_buffer(name: str) -> bool:
    """Whether `name` is a buffer transformers ignores on load (see [`LEGACY_BUFFER_PATTERNS`])."""
    import re

    return any(re.search(p, name) for p in LEGACY_BUFFER_PATTERNS)


def chunk_elements() -> int:
    """Elements per merge chunk (`HF_SOUPS_CHUNK_ELEMENTS`, default 256Ki: 1 MiB of fp32).

    A chunk's fp32 accumulator fits a core's L2 cache, so the write that follows the kernel copies it from the cache
    rather than from memory (4 MiB chunks measured 1.5-2x slower end to end on a 2-core machine).
    """
    return max(1, int(os.environ.get("HF_SOUPS_CHUNK_ELEMENTS", 256 * 1024)))


def merge_threads() -> int:
    """Threads that merge chunks: `HF_SOUPS_NUM_THREADS`, else the cores this process may run on."""
    env = os.environ.get("HF_SOUPS_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def eval_cache_bytes() -> int:
    """Bytes of preprocessed image batches an evaluator keeps between passes (`HF_SOUPS_EVAL_CACHE_MB`, default 64):
    beyond it, batches are preprocessed again on each pass, so memory stays bounded."""
    return int(float(os.environ.get("HF_SOUPS_EVAL_CACHE_MB", "64")) * 1024 * 1024)


def max_image_bytes() -> int:
    """Largest image file an evaluation set may name, in bytes (`HF_SOUPS_MAX_IMAGE_MB`, default 100); a larger file
    is refused before it is read. Decoded size is bounded by PIL's `Image.MAX_IMAGE_PIXELS` (a decompression bomb is
    refused, its warning included)."""
    return int(float(os.environ.get("HF_SOUPS_MAX_IMAGE_MB", "100")) * 1024 * 1024)


def max_abs_logit() -> float:
    """Largest logit magnitude a scored model may produce (`HF_SOUPS_MAX_ABS_LOGIT`, default 1e4): trained classifiers
    stay within tens; beyond the bound (or NaN/inf, or the same logits for every example) a greedy candidate is
    rejected and an evaluation row is flagged as degenerate."""
    return float(os.environ.get("HF_SOUPS_MAX_ABS_LOGIT", "1e4"))


def fsync_enabled() -> bool:
    """Whether the soup's files are fsynced before the atomic rename (`HF_SOUPS_FSYNC=1`)."""
    return os.environ.get("HF_SOUPS_FSYNC", "0").lower() in {"1", "true", "yes"}


def hub_cache_env_dirs() -> list[str]:
    """The Hugging Face cache locations set in the environment (`HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `HF_HOME`)."""
    return [os.environ[v] for v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME") if os.environ.get(v)]


def world_size() -> int:
    """Processes of an `accelerate launch`/`torchrun` run (`WORLD_SIZE`, 1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def progress_disabled() -> bool:
    """Whether progress bars are off (`HF_HUB_DISABLE_PROGRESS_BARS`)."""
    from huggingface_hub.utils import are_progress_bars_disabled

    return are_progress_bars_disabled()
