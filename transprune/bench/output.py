"""Where the benchmarks' results go: progress lines on stderr, JSON files, and the number cells of
their markdown tables.

stdout is kept for the markdown a script prints (the docs quote it), so progress goes to
stderr, flushed line by line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    """A number for a table cell, with thousands separators; ``-`` for a figure not measured."""
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def write_json(path: Path, data: dict) -> None:
    """Writes ``data`` (paths and other objects as their ``str``) to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
