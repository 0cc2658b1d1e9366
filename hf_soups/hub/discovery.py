"""Hub discovery: find the fine-tunes that share a base model (the Hub's model tree) or a collection, and check them.

`find_ingredients` lists candidate repos with huggingface_hub (`HfApi.list_models` on the model-tree tags
`base_model:<id>` / `base_model:finetune:<id>`, or `HfApi.get_collection`), pins each to a commit sha, reads only
its small files and safetensors headers (no weight download), and runs the compatibility verdict over the group.
The result, a [`CandidateSet`], holds the compatible ingredients, every rejected repo with its reason, and the query
with its date, so that a soup can record how its ingredients were found.

Which repo is "the odd one out" is decided by majority: candidates are clustered by a structural signature
(`model_type`, `architectures`, tensor names and shapes, label map, declared `base_model`); the first member (in repo
id order) of the largest cluster is the reference, ties going to the cluster met first in repo id order. Every other
candidate is compared with it by [`compat.compare`] (tokenizer identity included) and rejected with the verdict's
own message when it differs.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from huggingface_hub import HfApi
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import tqdm

from .. import constants
from ..atomic_file import write_atomic
from ..compat import CompatibilityReport, IngredientMeta, Problem, compare, normalize_id2label
from ..errors import HubConnectionError, IngredientNotFoundError, InvalidArgumentError, SoupError
from ..refs import Ingredient, IngredientRef, _shown_id, repo_id_problem
from ._errors import hub_errors
from ._http import Deadline, api_get_json, paged_json
from .client import fetch_meta, resolve

__all__ = ["find_ingredients", "CandidateSet", "Candidate", "DiscoveryQuery", "read_refs"]

_SHA = re.compile(r"[0-9a-f]{40}")
_SLUG = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", re.ASCII)

_RELATION_REASONS = {
    "adapter": ("a PEFT adapter of '{base}', not a full fine-tune.",
                "pass adapters=True (CLI: --adapters) to soup it as its merged weights, W + s·B·A."),
    "quantized": ("a quantized copy of '{base}'; a soup averages full-precision fine-tunes.",
                  "soup the full-precision fine-tunes it was made from."),
    "merge": ("a merge of several models (base_model_relation: merge), not a fine-tune.",
              "pass it to `soup_from_hub` explicitly if you do mean to soup a merge."),
}


@dataclass(frozen=True)
class DiscoveryQuery:
    """What was asked, and when: recorded in the soup's card.

    Attributes:
        base_model, author, task, search, collection (`str`, *optional*): the criteria given.
        limit (`int`, *optional*): the most candidates listed.
        date (`str`): when the Hub was asked, ISO 8601 UTC (`2026-11-26T06:00:00Z`).
    """

    base_model: str | None = None
    author: str | None = None
    task: str | None = None
    search: str | None = None
    collection: str | None = None
    limit: int | None = None
    date: str = ""

    def criteria(self) -> dict[str, Any]:
        """The criteria given, without the date."""
        return {k: v for k, v in asdict(self).items() if v is not None and k != "date"}

    def command(self) -> str:
        """The equivalent `hf-soups find` command line."""
        flags = {"base_model": "--base", "author": "--author", "task": "--task", "search": "--search",
                 "collection": "--collection", "limit": "--limit"}
        return "hf-soups find " + " ".join(f"{flags[k]} {v}" for k, v in self.criteria().items())

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.criteria().items()) + f" ({self.date})"


@dataclass(frozen=True)
class Candidate:
    """One repo found by [`find_ingredients`].

    Attributes:
        repo_id (`str`): the Hub repo id.
        sha (`str`, *optional*): the commit it was pinned to (`None` when it could not even be resolved).
        verdict (`"compatible"` or `"rejected"`).
        reason (`str`, *optional*): why it was rejected.
        fix (`str`, *optional*): what would make it usable.
    """

    repo_id: str
    sha: str | None
    verdict: Literal["compatible", "rejected"] = "compatible"
    reason: str | None = None
    fix: str | None = None

    @property
    def ref(self) -> str:
        """`repo_id@sha`: the pinned reference `soup_from_hub` takes."""
        return f"{self.repo_id}@{self.sha}" if self.sha else self.repo_id


@dataclass(frozen=True)
class CandidateSet:
    """The result of [`find_ingredients`]: compatible ingredients, rejected repos with reasons, and the query.

    Pass it to [`soup_from_hub`] as the refs: the soup is made from `.refs` (pinned to the shas checked here) and its
    card records the query and its date.

    Attributes:
        ingredients (`tuple[Candidate, ...]`): the compatible fine-tunes, in repo id order.
        rejected (`tuple[Candidate, ...]`): every other candidate with its reason, in repo id order.
        query ([`DiscoveryQuery`]): what was asked, with the date.
        report ([`CompatibilityReport`]): the verdict over `ingredients`, with its warnings.
    """

    ingredients: tuple[Candidate, ...]
    rejected: tuple[Candidate, ...]
    query: DiscoveryQuery
    report: CompatibilityReport = field(default_factory=lambda: CompatibilityReport([]), compare=False, repr=False)

    @property
    def refs(self) -> tuple[str, ...]:
        """The compatible ingredients as pinned `"repo@sha"` strings."""
        return tuple(c.ref for c in self.ingredients)

    def __len__(self) -> int:
        return len(self.ingredients)

    def __iter__(self) -> Iterator[str]:
        return iter(self.refs)

    @property
    def discovery(self) -> dict[str, Any]:
        """What a soup's card records about how its ingredients were found."""
        return {
            "query": self.query.criteria(), "date": self.query.date, "command": self.query.command(),
            "found": len(self.ingredients),
            "rejected": [{"repo": c.repo_id, "sha": c.sha, "reason": c.reason} for c in self.rejected],
        }

    def to_dict(self) -> dict[str, Any]:
        return {"query": {**self.query.criteria(), "date": self.query.date},
                "ingredients": [asdict(c) for c in self.ingredients], "rejected": [asdict(c) for c in self.rejected],
                "refs": list(self.refs), "warnings": [p.__dict__ for p in self.report.warnings]}

    def to_table(self) -> str:
        """A plain-text table (repo, sha, verdict, reason), compatible ingredients first."""
        from ..text import one_line  # listing and collection content never breaks the table (nor the terminal)

        rows = [("repo", "sha", "verdict", "reason")]
        rows += [(one_line(c.repo_id), one_line(c.sha or "-")[:12], c.verdict, one_line(c.reason or ""))
                 for c in self.ingredients + self.rejected]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"Found {len(self.ingredients)} compatible of {len(self.ingredients) + len(self.rejected)} "
                 f"candidates ({one_line(self.query)})"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        return "\n".join(line.rstrip() for line in lines)

    def write_refs(self, path: str | os.PathLike[str]) -> str:
        """Write the pinned refs, one per line, under a `#` header recording the query; atomically.

        `hf-soups soup @PATH` and [`read_refs`] read it back.
        """
        text = (f"# {self.query.command()}\n# {self.query.date}: {len(self.ingredients)} compatible, "
                f"{len(self.rejected)} rejected\n" + "".join(f"{r}\n" for r in self.refs))
        path = os.fspath(path)
        write_atomic(path, text)
        return path


#: The largest refs file `read_refs` reads (a refs file holds one short line per ingredient).
REFS_FILE_MAX_BYTES = 1 << 20


def read_refs(path: str | os.PathLike[str]) -> list[str]:
    """Read refs from a file: one per line; blank lines and `#` comments are ignored.

    Only a regular UTF-8 text file of at most `REFS_FILE_MAX_BYTES` is read (checked before it is opened: a FIFO,
    a device or a directory is refused, never read). A line naming another refs file (`@FILE`) is refused: refs
    files do not nest.

    Args:
        path (`str` or `os.PathLike`): the refs file, as `CandidateSet.write_refs` writes it.

    Returns:
        `list[str]`: the refs, in file order.

    Raises:
        [`IngredientNotFoundError`]: the file does not exist.
        [`InvalidArgumentError`]: it is not a regular file, is too large, is not UTF-8 text, names another refs
            file, or holds no ref.
    """
    from ..checkpoint.safe_files import read_regular_file

    path = os.fspath(path)
    fix = "pass a text file with one repo id (or repo@sha) per line, as `hf-soups find --write-refs FILE` writes."

    def refuse(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"the refs file {why}.", file=path, fix=fix)

    try:
        data = read_regular_file(path, limit=REFS_FILE_MAX_BYTES, refuse=refuse)
    except FileNotFoundError:
        raise IngredientNotFoundError("the refs file does not exist.", file=path,
                                      fix="write one with `hf-soups find ... --write-refs FILE`.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise refuse(f"is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if "\x00" in text:
        raise refuse(f"is not a text file (it holds a NUL byte at offset {text.index(chr(0))})")
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        ref = line.split("#", 1)[0].strip()
        if ref.startswith("@"):
            raise refuse(f"names another refs file on line {number} ({ref[:80]!r}); refs files do not nest")
        if ref:
            refs.append(ref)
    if not refs:
        raise refuse("lists no ingredient")
    return refs


@dataclass
class _Listed:
    repo_id: str
    sha: str | None = None
    tags: tuple[str, ...] | None = None  # None: unknown (collections carry no tags)


@dataclass
class _Checked:
    listed: _Listed
    ingredient: Ingredient | None = None
    meta: IngredientMeta | None = None
    reason: str | None = None
    fix: str | None = None


def find_ingredients(
    base_model: str | None = None,
    *,
    author: str | None = None,
    task: str | None = None,
    search: str | None = None,
    collection: str | None = None,
    limit: int | None = None,
    align_labels: bool = False,
    arch_check: bool = True,
    token: str | bool | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    max_workers: int = 8,
    adapters: bool = False,
) -> CandidateSet:
    """Find fine-tunes of one base model on the Hub (or in a collection) and keep those that can be souped together.

    Candidates come from the Hub's model tree (`HfApi.list_models(filter="base_model:<base_model>")`, narrowed by
    `author`, `task` and `search`) or from a collection. Each is pinned to a commit sha; its `config.json`, card and
    safetensors headers are read (never its weights), `max_workers` repos at a time; then the compatibility verdict
    runs over the group. The majority decides which repos are the odd ones out (see the module docstring).

    With `adapters=True`, the base's LoRA adapters (`base_model_relation: adapter`) are ingredients too, each read
    as its merged weights (refused kinds, such as DoRA or IA3, are rejected with their reason).

    Rejected, each with its reason: adapters (unless `adapters=True`), quantized copies and merges of the base; repos that do not declare
    `base_model` (collections); repos without safetensors weights; gated or private repos without a token; another
    architecture, other tensor shapes, `num_labels` or label order (unless `align_labels=True`), another tokenizer,
    or a checkpoint that does not match its own config.

    Args:
        base_model (`str`, *optional*):
            The pretrained checkpoint the fine-tunes declare in their card (`base_model: org/base`).
        author (`str`, *optional*):
            Only repos of this user or organisation.
        task (`str`, *optional*):
            Only this pipeline tag, e.g. `"text-classification"`.
        search (`str`, *optional*):
            Only repo ids containing this string.
        collection (`str`, *optional*):
            A collection slug (`"user/my-sweep-64f9a55bb3115b4f513ec026"`): its models are the candidates.
        limit (`int`, *optional*):
            The most candidates to list (in the Hub's listing order, or the collection's).
        align_labels (`bool`, *optional*, defaults to `False`):
            Accept fine-tunes whose `id2label` is a permutation of the majority's (the soup then needs
            `align_labels=True` too).
        arch_check (`bool`, *optional*, defaults to `True`):
            Check each distinct config's model, built on the meta device, against the headers.
        token (`str` or `bool`, *optional*):
            Hub token, for private and gated repos.
        endpoint, cache_dir (`str`, *optional*):
            Hub endpoint and cache directory (small files only are cached).
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar (huggingface_hub's tqdm; `HF_HUB_DISABLE_PROGRESS_BARS` disables it).
        max_workers (`int`, *optional*, defaults to `8`):
            How many repos are checked at the same time.

    Returns:
        [`CandidateSet`]: `.ingredients` and `.rejected` (each `repo_id`, `sha`, `verdict`, `reason`), both in repo id
        order; `.refs` (pinned `"repo@sha"`); `.query` (criteria and date); `.to_table()`; `.write_refs(path)`.

    Raises:
        [`SoupError`]: no criterion was given, or the Hub refused the listing.
        [`IngredientNotFoundError`]: the collection does not exist (or is private and no token was given).

    Example:
        ```python
        >>> from hf_soups import find_ingredients, soup_from_hub
        >>> found = find_ingredients("org/base", author="me", task="text-classification")
        >>> print(found.to_table())
        >>> soup = soup_from_hub(found, output_dir="soup")  # the card records the query and its date
        ```
    """
    if not any((base_model, author, search, collection, task)):
        raise SoupError("nothing to look for.", fix="pass base_model='org/base', collection='user/slug', author=, "
                        "task= or search=.")
    if max_workers < 1:
        raise SoupError(f"max_workers={max_workers}: no repo could be checked.", fix="pass max_workers >= 1.")
    if limit is not None and limit < 1:
        raise SoupError(f"limit={limit}: no candidate would be listed.",
                        fix="pass limit >= 1, or None for every candidate.")
    if base_model is not None and (problem := repo_id_problem(base_model)) is not None:
        raise IngredientNotFoundError(f"the base model is not a valid Hub repo id ({problem}).", param="base_model",
                                      ingredient=_shown_id(base_model), fix="pass the base model's repo id, "
                                      "e.g. 'google-bert/bert-base-uncased'.")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    query = DiscoveryQuery(base_model, author, task, search, collection, limit, date)
    api = HfApi(endpoint=endpoint)
    if collection is not None:
        listed = _from_collection(api, collection, author=author, search=search, limit=limit, token=token)
    else:
        listed = _from_listing(api, base_model, author=author, task=task, search=search, limit=limit, token=token)
    unique = {item.repo_id: item for item in listed}  # a repo listed twice is checked once
    order = sorted(unique.values(), key=lambda item: (item.repo_id.casefold(), item.repo_id))

    checked: list[_Checked] = []
    to_inspect: list[_Listed] = []
    for item in order:
        problem = repo_id_problem(item.repo_id)
        rejection = ((f"not a valid Hub repo id ({problem}).", "remove it from the collection, or list only valid "
                      "repo ids.") if problem is not None else _relation_rejection(item, base_model, adapters))
        if rejection is not None:
            checked.append(_Checked(item, reason=rejection[0], fix=rejection[1]))
        else:
            to_inspect.append(item)
    checked += _inspect_all(to_inspect, token=token, endpoint=endpoint, cache_dir=cache_dir, progress=progress,
                            max_workers=max_workers, adapters=adapters)
    for c in checked:
        if c.reason is None and c.meta is not None:
            c.reason, c.fix = _declaration_problem(c, base_model, task)
    report = _majority_verdict([c for c in checked if c.reason is None and c.meta is not None],
                               align_labels=align_labels, arch_check=arch_check)
    by_repo = {c.listed.repo_id: c for c in checked}
    ingredients, rejected = [], []
    for item in order:
        c = by_repo[item.repo_id]
        sha = c.ingredient.revision if c.ingredient is not None else item.sha
        if c.reason is None:
            ingredients.append(Candidate(item.repo_id, sha))
        else:
            rejected.append(Candidate(item.repo_id, sha, "rejected", c.reason, c.fix))
    return CandidateSet(tuple(ingredients), tuple(rejected), query, report)


def _from_listing(api: HfApi, base_model: str | None, *, author: str | None, task: str | None, search: str | None,
                  limit: int | None, token: Any) -> list[_Listed]:
    """Every page of the Hub's listing, with sha and tags, paged by [`paged_json`]: the `Link` next page and any
    redirect stay on the endpoint's origin, and the listing is bounded in pages and time."""
    what = f"models listing ({base_model or author or search or task})"
    params: dict[str, Any] = {"expand": ["sha", "tags"]}
    for key, value in (("filter", f"base_model:{base_model}" if base_model else None), ("author", author),
                       ("pipeline_tag", task), ("search", search), ("limit", limit)):
        if value is not None:
            params[key] = value
    out: list[_Listed] = []
    with hub_errors(what, token_given=bool(token)):
        for page in paged_json(f"{api.endpoint.rstrip('/')}/api/models", params=params, token=token,
                               endpoint=api.endpoint, what=what):
            out += [_listed_model(entry) for entry in page]
            if limit is not None and len(out) >= limit:
                return out[:limit]
    return out


def _listed_model(entry: Any) -> _Listed:
    """One entry of a listing page. A sha that is not 40-hex is dropped (the repo is then pinned by its own request);
    tags that are not strings are ignored; the id is kept as [`_listed_id`] shows it."""
    entry = entry if isinstance(entry, dict) else {"id": entry}
    sha, tags = entry.get("sha"), entry.get("tags")
    return _Listed(_listed_id(entry.get("id", entry.get("modelId"))),
                   sha if isinstance(sha, str) and _SHA.fullmatch(sha) else None,
                   tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ())


def _listed_id(value: Any) -> str:
    """A listed repo id as discovery keeps it: a valid id unchanged; anything else printable and short (it is only
    ever shown, in a rejected row: newlines and control characters become '?', a long one is cut), never valid."""
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    return value if repo_id_problem(value) is None else _shown_id(value)


def _from_collection(api: HfApi, slug: str, *, author: str | None, search: str | None, limit: int | None,
                     token: Any) -> list[_Listed]:
    """The collection's models, in its order, narrowed by `author` and `search`; `task` is checked per repo later.

    Items are Hub ids, never local paths; one that is not a valid id becomes a rejected row."""
    what = f"collection {slug}"
    if not _SLUG.fullmatch(slug):
        raise IngredientNotFoundError(
            "not a collection slug.", file=slug, param="collection",
            fix="pass the slug from the collection's URL (`user/title-<id>`).")
    deadline = Deadline(constants.LISTING_DEADLINE, what, api.endpoint)
    with hub_errors(what, token_given=bool(token)):
        try:
            data, _ = api_get_json(f"{api.endpoint.rstrip('/')}/api/collections/{slug}", token=token,
                                   endpoint=api.endpoint, what=what, deadline=deadline)
        except hf_errors.HfHubHTTPError as e:
            if getattr(e.response, "status_code", None) not in (401, 403, 404):
                raise
            raise IngredientNotFoundError(
                "the collection does not exist, or it is private and no valid token was given.", file=slug,
                fix="pass the slug from the collection's URL (`user/title-<id>`), and token= for a private one.",
            ) from None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise HubConnectionError(f"{what}: the endpoint's answer holds no list of items.",
                                 fix="check the slug and the endpoint (HF_ENDPOINT / endpoint=).")
    models = [(i.get("position"), k, i.get("id", i.get("item_id"))) for k, i in enumerate(items)
              if isinstance(i, dict) and i.get("type", i.get("item_type")) == "model"]
    models.sort(key=lambda m: (m[0] if type(m[0]) is int else float("inf"), m[1]))
    out = [_Listed(_listed_id(item_id), tags=None)
           for _, _, item_id in models
           if (author is None or str(item_id).split("/")[0] == author)
           and (search is None or search.casefold() in str(item_id).casefold())]
    return out[:limit] if limit is not None else out


def _relation_rejection(item: _Listed, base_model: str | None, adapters: bool = False) -> tuple[str, str] | None:
    """Adapters, quantized copies and merges of the base, told apart by the Hub's tags (no request needed)."""
    if base_model is None or item.tags is None or f"base_model:finetune:{base_model}" in item.tags:
        return None
    for relation, (reason, fix) in _RELATION_REASONS.items():
        if relation == "adapter" and adapters:
            continue
        if f"base_model:{relation}:{base_model}" in item.tags:
            return reason.format(base=base_model), fix
    return None


def _inspect_all(items: Sequence[_Listed], *, token: Any, endpoint: str | None, cache_dir: str | None,
                 progress: bool, max_workers: int, adapters: bool = False) -> list[_Checked]:
    """Pin and preflight every candidate, `max_workers` at a time; results in the order of `items`."""
    results: list[_Checked | None] = [None] * len(items)
    if not items:
        return []
    bar = tqdm(total=len(items), desc=f"Checking {len(items)} candidates", unit="repo",
               disable=not progress or constants.progress_disabled())
    with bar, ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="hf-soups-find") as pool:
        bases = _BaseMetas(token, endpoint, cache_dir) if adapters else None
        futures = {pool.submit(_inspect, item, token, endpoint, cache_dir, bases): k for k, item in enumerate(items)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update(1)
    return [r for r in results if r is not None]


class _BaseMetas:
    """Each adapter base's meta, fetched once (pinned to its sha) however many adapters name it; thread-safe."""

    def __init__(self, token: Any, endpoint: str | None, cache_dir: str | None) -> None:
        import threading

        self._args = (token, endpoint, cache_dir)
        self._lock = threading.Lock()
        self._metas: dict[tuple[str, str | None], IngredientMeta] = {}

    def get(self, ref: str, revision: str | None) -> IngredientMeta:
        token, endpoint, cache_dir = self._args
        with self._lock:
            if (ref, revision) not in self._metas:
                base = resolve(IngredientRef.parse(ref, revision), token=token, endpoint=endpoint, cache_dir=cache_dir)
                self._metas[(ref, revision)] = fetch_meta(base, token=token, cache_dir=cache_dir, endpoint=endpoint)
            return self._metas[(ref, revision)]


def _adapter_meta(ing: Ingredient, bases: _BaseMetas, token: Any, endpoint: str | None,
                  cache_dir: str | None) -> tuple[IngredientMeta | None, tuple[str, str] | None]:
    """An adapter repo's verdict inputs (its base's config, its merged tensors), or why it is refused."""
    from ..checkpoint.adapter import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_refusals, build_layout, layout_tensors,
                                      parse_adapter_config)
    from ..checkpoint.safe_files import read_inside
    from .client import download
    from .stream import read_remote_header

    if ADAPTER_WEIGHTS not in ing.files:
        return None, ("the adapter has no adapter_model.safetensors.", "ask the author to re-save it with peft.")
    small = download(ing, token=token, endpoint=endpoint, cache_dir=cache_dir, weights=False)
    config = parse_adapter_config(read_inside(small, ADAPTER_CONFIG, ingredient=ing.name), ing.name)
    header, _ = read_remote_header(ing, ADAPTER_WEIGHTS, token=token, endpoint=endpoint)
    refused = adapter_refusals(config, header)
    if refused:
        field, reason, fix = refused[0]
        return None, (f"{field}: {reason}", fix)
    if not config.base_model:
        return None, ("its adapter_config.json names no base model.", "ask the author to set base_model_name_or_path.")
    base = bases.get(config.base_model, config.base_revision)
    tensors = layout_tensors(base.tensors or {}, build_layout(config, header, ing.name), header)
    return IngredientMeta(ing.name, base.config, tensors, base.tokenizer_hash, (config.base_model,),
                          base.vocabulary, base.processor), None


def _inspect(item: _Listed, token: Any, endpoint: str | None, cache_dir: str | None,
             bases: _BaseMetas | None = None) -> _Checked:
    """Pin one repo (the listing's sha when known) and gather its verdict inputs from small files and headers."""
    from ..checkpoint.adapter import is_adapter_listing

    checked = _Checked(item)
    try:
        ref = IngredientRef.hub(item.repo_id, item.sha)  # a Hub id, never a folder of the working directory
        checked.ingredient = resolve(ref, token=token, endpoint=endpoint, cache_dir=cache_dir)
        files = checked.ingredient.files
        if is_adapter_listing(files):
            if bases is None:
                checked.reason, checked.fix = (_RELATION_REASONS["adapter"][0].format(base="its base"),
                                               _RELATION_REASONS["adapter"][1])
                return checked
            checked.meta, refused = _adapter_meta(checked.ingredient, bases, token, endpoint, cache_dir)
            if refused is not None:
                checked.reason, checked.fix = refused
            return checked
        checked.meta = fetch_meta(checked.ingredient, token=token, cache_dir=cache_dir, endpoint=endpoint)
    except SoupError as e:
        checked.reason, checked.fix = e.message, e.fix
    return checked


def _declaration_problem(c: _Checked, base_model: str | None, task: str | None) -> tuple[str | None, str | None]:
    """What the card declares, against the query: the base (collections) and the task."""
    if c.meta is None:  # nothing was read: nothing to compare with the query
        return None, None
    declared = c.meta.base_model
    if base_model is not None:
        if not declared:
            itself = " (it is the base model itself)" if c.listed.repo_id == base_model else ""
            return (f"does not declare base_model '{base_model}' in its card{itself}.",
                    f"add `base_model: {base_model}` to its README.md front matter if it is a fine-tune of it.")
        if base_model not in declared:
            return (f"declares base_model {list(declared)}, not '{base_model}'.",
                    "soup only fine-tunes of the same pretrained checkpoint.")
        if len(declared) > 1:
            return _RELATION_REASONS["merge"]
    if task is not None and c.listed.tags is None:  # collections: the listing did not filter by task
        from ..card import pipeline_tag_for

        tag = pipeline_tag_for(c.meta.config.get("architectures"))
        if tag != task:
            return (f"its task is {tag!r}, not {task!r}.", "drop task= to keep it.")
    return None, None


def _signature(meta: IngredientMeta, align_labels: bool) -> str:
    """What must agree for two fine-tunes to be souped together (the tokenizer is checked by the verdict itself)."""
    labels = normalize_id2label(meta.config)
    return json.dumps([
        meta.config.get("model_type"), meta.config.get("architectures"),
        sorted((n, list(t.shape)) for n, t in meta.tensors.items() if not constants.is_legacy_buffer(n)),
        None if labels is None else sorted(labels.values()) if align_labels else sorted(labels.items()),
        sorted(meta.base_model or ()),
    ], default=str)


def _majority_verdict(group: list[_Checked], *, align_labels: bool, arch_check: bool) -> CompatibilityReport:
    """Compare every candidate with the reference of the largest cluster; mark the others rejected (in place)."""
    if not group:
        return CompatibilityReport([])
    signatures = [_signature(c.meta, align_labels) for c in group]  # type: ignore[arg-type]
    sizes = Counter(signatures)
    best = max(sizes, key=lambda s: (sizes[s], -signatures.index(s)))
    ref = group[signatures.index(best)]
    others = [c for c in group if c is not ref]
    metas = [c.meta for c in [ref, *others]]
    report = compare(metas, align_labels=align_labels)  # type: ignore[arg-type]
    problems: dict[str, list[Problem]] = {}
    for p in report.problems:
        problems.setdefault(p.ingredient, []).append(p)
    if arch_check:
        from ..architecture import architecture_problems

        seen: dict[str, list[Problem]] = {}
        for meta in metas:
            if meta is None or meta.name in problems:
                continue
            key = json.dumps(meta.config, sort_keys=True, default=str) + "|".join(sorted(meta.tensors))
            if key not in seen:
                seen[key] = architecture_problems(meta.name, meta.config, meta.tensors)
                report.warnings += [p for p in seen[key] if p.severity != "error"]
            for p in seen[key]:
                if p.severity == "error":
                    problems.setdefault(meta.name, []).append(p)
    for c in group:
        found = problems.get(c.meta.name)  # type: ignore[union-attr]
        if found:
            c.reason = "; ".join(f"{p.field}: {p.message}" for p in found[:2]) + (
                f" (and {len(found) - 2} more)" if len(found) > 2 else "")
            c.fix = found[0].fix
    kept = [c.meta.name for c in group if c.reason is None]  # type: ignore[union-attr]
    warnings = [w for w in report.warnings if w.ingredient in kept or w.ingredient == "(all)"]
    return CompatibilityReport(kept, [], warnings)
