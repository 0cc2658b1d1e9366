"""Outside text made safe to show: on one line ([`one_line`]) and as literal markdown ([`escape_markdown`]).

A leaf module (standard library only), so the card, the evaluation report and discovery's tables share one escaping.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["escape_markdown", "one_line"]

#: Characters outside text may not bring into the card's markdown as they are (see `escape_markdown`).
_MD_SPECIAL = re.compile(r"[\\`*~#|\[\]$!{}]")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
#: A leading marker that would start a list, a quote, a setext underline or a thematic break.
_MD_LEADING = re.compile(r"^(?:[-+=]|\d+[.)])")
#: What a code span may show as it is: no backtick, no table pipe, no control character (checked by `one_line`).
_CODE_SAFE = re.compile(r"[^`|]+")


def one_line(text: Any) -> str:
    """Outside text as one line of plain text: every line break, control, format (bidi), private-use or unassigned
    character becomes U+FFFD (tabs and line breaks a space), so it can neither start a new line nor hide text.

    Args:
        text (`Any`): a repo id, label, dataset or metric name, reason... (`str()` of anything else).

    Returns:
        `str`: the same text on one line.
    """
    out = []
    for c in str(text):
        if c in "\t\n\r" or c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
            out.append(" ")
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append("\ufffd")
        else:
            out.append(c)
    return "".join(out)


def escape_markdown(text: Any, *, code: bool = False) -> str:
    """The one way outside text (repo ids, collection items, label/dataset/metric/column names, reasons, queries)
    enters a card's markdown: it can never open a code fence, a heading, an HTML block or front matter, nor break a
    table row, a link or emphasis.

    The text is put on one line ([`one_line`]); `&`, `<`, `>` become entities; markdown punctuation
    (`` \\ ` * ~ # | [ ] $ ! { } ``) is backslash-escaped, and so is a leading list, quote or underline marker;
    leading and trailing blanks are dropped (they would indent a code block), and blank text shows as `–`.

    Args:
        text (`Any`): the outside text (`str()` of anything else).
        code (`bool`, *optional*, defaults to `False`): show it as a code span, when it holds no backtick and no
            `|` (a code span cannot escape them); otherwise as escaped text.

    Returns:
        `str`: markdown that renders as `text` and nothing else.
    """
    line = one_line(text).strip()  # leading blanks would indent a code block inside a list item or quote
    if not line:  # blank text would leave an empty list item, quote or heading: say it is empty
        return "–"
    if code and _CODE_SAFE.fullmatch(line):
        return f"`{line}`"
    line = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), line)
    line = "".join(_HTML.get(c, c) for c in line)
    return _MD_LEADING.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], line)
