"""Reading the small files of a checkpoint: config, tokenizer identity, card metadata. No weights, no HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from typing import Any

from .. import constants
from ..errors import CorruptCheckpointError, IngredientNotFoundError, SoupError
from .safe_files import check_files_inside, open_inside, read_inside

__all__ = ["read_config", "normalize_id2label", "git_blob_sha", "tokenizer_identity", "vocabulary_identity", "local_tokenizer_identity",
           "card_base_model", "card_metadata", "find_files",
           "read_processor_config"]


def normalize_id2label(config: Mapping[str, Any]) -> dict[int, str] | None:
    """A config's `id2label` with int keys (JSON keeps them as strings): the one place that converts them.

    Args:
        config (`Mapping`): a parsed `config.json`.

    Returns:
        `dict[int, str]` or `None`: `None` when the config has no `id2label`, or one that is not a mapping of integer
        ids (a malformed label map is reported by the verdict, never guessed).
    """
    raw = config.get("id2label")
    if not isinstance(raw, Mapping):
        return None
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        return None


def read_config(path: str, ingredient: str) -> dict[str, Any]:
    """Load `config.json`, read only if it resolves inside its directory and is a regular file.

    Raises:
        [`IngredientNotFoundError`]: no config.json.
        [`UnsafeCheckpointError`]: it is a link out of the checkpoint, a FIFO or a device.
        [`CorruptCheckpointError`]: it is not a JSON object.
    """
    if not path or not os.path.lexists(path):
        raise IngredientNotFoundError(
            "no config.json found.", ingredient=ingredient, file="config.json",
            fix="point to a transformers checkpoint saved with `save_pretrained`.",
        )
    try:
        config = json.loads(_read(path, ingredient, limit=_MAX_SMALL_FILE))
    except (OSError, ValueError, RecursionError) as e:
        if isinstance(e, SoupError):
            raise
        raise CorruptCheckpointError(f"config.json is not valid JSON ({str(e)[:200]}).", ingredient=ingredient,
                                     file="config.json", fix="re-export the checkpoint.") from None
    if not isinstance(config, dict):
        raise CorruptCheckpointError("config.json is not a JSON object.", ingredient=ingredient, file="config.json")
    _check_config_types(config, ingredient)
    return config


#: Largest config/card/tokenizer JSON read whole into memory (a config or card bigger than this is not genuine).
_MAX_SMALL_FILE = 512 * 1024 * 1024


def _open(path: str, ingredient: str | None = None) -> int:
    """A descriptor on `path`, opened through [`open_inside`] (regular file, no link out of its directory)."""
    directory, name = os.path.split(os.path.abspath(path))
    return open_inside(directory, name, ingredient=ingredient, file=name)


def _read(path: str, ingredient: str | None = None, limit: int | None = None) -> bytes:
    directory, name = os.path.split(os.path.abspath(path))
    return read_inside(directory, name, ingredient=ingredient, file=name, limit=limit)


def _lines(path: str) -> io.TextIOWrapper:
    """The text lines of `path` (universal newlines, as `open(path)` reads them), read through [`open_inside`]."""
    return io.TextIOWrapper(io.BytesIO(_read(path, limit=_MAX_SMALL_FILE)), encoding="utf-8")


#: The fields hf_soups reads from config.json, with the JSON types transformers gives them.
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model_type": (str,), "architectures": (list,), "auto_map": (dict,), "id2label": (dict,),
    "label2id": (dict,), "num_labels": (int,), "torch_dtype": (str,), "dtype": (str,),
}


def _check_config_types(config: dict[str, Any], ingredient: str) -> None:
    """Refuse a config whose fields hf_soups reads have the wrong JSON type (transformers could not load it either)."""
    for key, types in _CONFIG_TYPES.items():
        value = config.get(key)
        if value is None:
            continue
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and key == "architectures":
            ok = all(isinstance(a, str) for a in value)  # type: ignore[union-attr]
        if ok and key == "num_labels":
            ok = 0 <= value < 2**31  # type: ignore[operator]
        if not ok:
            raise CorruptCheckpointError(
                f"config.json's '{key}' is {type(value).__name__} {str(value)[:60]!r}, not a valid "
                f"{'list of strings' if key == 'architectures' else types[0].__name__}.", ingredient=ingredient,
                file="config.json", fix="fix config.json (transformers cannot load it either) or re-export it.")


def git_blob_sha(path: str) -> str:
    """The git blob id of a local file: what the Hub reports as a file's `blobId`."""
    h = hashlib.sha1()
    with os.fdopen(_open(path), "rb") as f:
        h.update(f"blob {os.fstat(f.fileno()).st_size}\0".encode())
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_identity(blob_ids: Mapping[str, str | None]) -> str | None:
    """sha256 over `name:blob-id` of the tokenizer identity files present; `None` when there are none.

    `tokenizer.json` alone identifies a fast tokenizer; otherwise the vocabulary files do. Hashing git blob ids
    lets a Hub ingredient (ids from the API, nothing downloaded) and a local one (ids computed) be compared.
    """
    names = ["tokenizer.json"] if blob_ids.get("tokenizer.json") else list(constants.TOKENIZER_IDENTITY_FILES)
    parts = [f"{n}:{blob_ids[n]}" for n in names if blob_ids.get(n)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest() if parts else None


def vocabulary_identity(files: Mapping[str, str]) -> str | None:
    """sha256 of the tokenizer's vocabulary (token -> id, plus BPE merges and added tokens), read from the files.

    Two tokenizers saved by different library versions have different `tokenizer.json` bytes but the same
    vocabulary; this is what decides identity when the file hashes differ.

    Args:
        files (`Mapping[str, str]`): tokenizer file name -> local path, for the files present.
    """
    vocab: dict[str, int] | None = None
    merges: list = []
    added: list[str] = []
    if "tokenizer.json" in files:
        try:
            obj = json.loads(_read(files["tokenizer.json"], limit=_MAX_SMALL_FILE))
            model = obj.get("model") or {}
            raw = model.get("vocab")
            if isinstance(raw, dict):
                vocab = {str(k): int(v) for k, v in raw.items()}
            elif isinstance(raw, list):  # Unigram: [[token, score], ...]
                vocab = {str(item[0]): i for i, item in enumerate(raw)}
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
            added = sorted(str(t.get("content")) for t in obj.get("added_tokens") or [])
        except SoupError:  # a link out of the checkpoint, a FIFO: refused, never read around
            raise
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            vocab = None
    if vocab is None and "vocab.txt" in files:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(_lines(files["vocab.txt"]))}
    if vocab is None and "vocab.json" in files:
        vocab = {str(k): int(v) for k, v in json.loads(_read(files["vocab.json"], limit=_MAX_SMALL_FILE)).items()}
        if "merges.txt" in files:
            merges = [ln.rstrip("\n") for ln in _lines(files["merges.txt"])
                      if ln.strip() and not ln.startswith("#version")]
    if vocab is None:
        return None
    canonical = json.dumps({"vocab": sorted(vocab.items()), "merges": merges, "added": added}, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def local_tokenizer_identity(directory: str) -> str | None:
    """[`tokenizer_identity`] of the tokenizer files in a local directory."""
    return tokenizer_identity({n: git_blob_sha(p) for n, p in find_files(directory).items()})


def card_base_model(readme_path: str | None) -> tuple[str, ...] | None:
    """The `base_model` declared in a model card's front matter, if any.

    Raises:
        [`UnsafeCheckpointError`]: the card is a link out of its checkpoint, a FIFO or a device.
    """
    base = card_metadata(readme_path).get("base_model")
    if isinstance(base, str):
        return (base,)
    if isinstance(base, list) and all(isinstance(b, str) for b in base):
        return tuple(base)
    return None


def card_metadata(readme_path: str | None) -> dict[str, Any]:
    """The YAML front matter of a model card (`{}` when there is no card or it cannot be parsed).

    Raises:
        [`UnsafeCheckpointError`]: the card is a link out of its checkpoint, a FIFO or a device.
    """
    if readme_path is None or not os.path.lexists(readme_path):
        return {}
    content = _read(readme_path, limit=_MAX_SMALL_FILE)
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    try:
        match = REGEX_YAML_BLOCK.search(content.decode("utf-8-sig"))
        meta = (yaml.safe_load(match.group(2)) if match else None) or {}
    except Exception:  # a malformed card must not stop a soup
        return {}
    return meta if isinstance(meta, dict) else {}


def find_files(directory: str, names: tuple[str, ...] = constants.TOKENIZER_IDENTITY_FILES) -> dict[str, str]:
    """The subset of `names` present in `directory`, as name -> real path, each checked with [`resolve_inside`].

    Raises:
        [`UnsafeCheckpointError`]: one of them is a link out of the directory, a FIFO or a device.
    """
    return check_files_inside(directory, names)


def read_processor_config(path: str | None, ingredient: str) -> dict[str, Any] | None:
    """The parsed `preprocessor_config.json` (image processor settings), `None` when there is none; read only if it
    resolves inside its directory and is a regular file.

    Raises:
        [`UnsafeCheckpointError`]: it is a link out of the checkpoint, a FIFO or a device.
        [`CorruptCheckpointError`]: the file is not a JSON object.
    """
    if not path or not os.path.lexists(path):
        return None
    try:
        data: Any = json.loads(_read(path, ingredient, limit=_MAX_SMALL_FILE))
    except (OSError, ValueError) as e:
        if isinstance(e, SoupError):
            raise
        data = e
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"preprocessor_config.json is not a JSON object ({data}).", ingredient=ingredient,
                                     file="preprocessor_config.json", fix="re-save the image processor.")
    return data
