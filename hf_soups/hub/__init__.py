"""Everything that speaks HTTP: resolve, preflight, download, stream and push, through huggingface_hub."""

from .client import download, fetch_meta, needed_patterns, resolve
from .push import push_folder
from .stream import HttpRangeSource, open_streaming_reader

__all__ = ["download", "fetch_meta", "needed_patterns", "resolve", "push_folder", "HttpRangeSource",
           "open_streaming_reader"]
