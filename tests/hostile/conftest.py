"""The hostile-input suite's shared checks (issue 19): every case runs a CLI or the Python API on
input a careless or hostile user would give, and asserts the same four things:

- the command fails: a non-zero exit status (CLI) or a typed ``TransPruneError`` (API);
- it says so in one line on stderr (CLI), with no traceback;
- nothing outside the intended output was written or deleted (``Tree`` snapshots);
- the message names the problem (each test checks a phrase of it).

CLIs run in-process through their ``main(argv)`` (seconds for the whole suite); the few cases that
need a real process (signals, a FIFO) start one.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Tree:
    """Every file and directory under ``root`` with its content hash: compare two to see what changed."""

    root: Path
    entries: dict

    @classmethod
    def of(cls, root: Path) -> "Tree":
        root = Path(root)
        entries = {}
        for path in sorted(root.rglob("*")):
            relative = str(path.relative_to(root))
            if path.is_symlink():
                entries[relative] = ("link", str(path.readlink()))
            elif path.is_file():
                entries[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[relative] = ("dir", None)
        return cls(root, entries)

    def assert_unchanged(self) -> None:
        now = Tree.of(self.root).entries
        added = sorted(set(now) - set(self.entries))
        removed = sorted(set(self.entries) - set(now))
        changed = sorted(name for name in set(now) & set(self.entries) if now[name] != self.entries[name])
        assert not (added or removed or changed), f"under {self.root}: added {added}, removed {removed}, " \
                                                  f"changed {changed}"


def assert_one_line_error(status: int, err: str, *phrases: str) -> str:
    """A CLI's failure: non-zero status, one line on stderr naming the problem, no traceback."""
    assert status != 0, f"exit status 0 for a bad input; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), f"{phrase!r} not in {lines[0]!r}"
    return lines[0]


def assert_one_line_message(exc: BaseException, *phrases: str) -> str:
    """A typed API error's message: one line naming the problem."""
    from transprune.errors import TransPruneError

    assert isinstance(exc, TransPruneError), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert "\n" not in message.strip(), message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in {message!r}"
    return message


@pytest.fixture
def build_copy(paper_build, tmp_path) -> Path:
    """A private copy of the tiny paper build, free to damage (the session's build stays intact)."""
    source, _ = paper_build
    return Path(shutil.copytree(source, tmp_path / "build"))
