"""Print `name==floor` for every `name>=floor` in setup.cfg's install_requires (for `make test-min`).

Usage: python tools/min_requirements.py [setup.cfg] [--skip NAME ...]
"""

from __future__ import annotations

import configparser
import re
import sys


def floors(path: str, skip: set[str]) -> list[str]:
    config = configparser.ConfigParser()
    config.read(path)
    out = []
    for line in config["options"]["install_requires"].strip().splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)\s*", line)
        if match is None:
            sys.exit(f"setup.cfg: no '>=' floor in requirement {line.strip()!r}")
        if match.group(1).lower() not in skip:
            out.append(f"{match.group(1)}=={match.group(2)}")
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    skip = {s.lower() for s in args[args.index("--skip") + 1:]} if "--skip" in args else set()
    args = args[: args.index("--skip")] if "--skip" in args else args
    print(" ".join(floors(args[0] if args else "setup.cfg", skip)))
