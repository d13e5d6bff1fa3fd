"""TensorRT's ONNX operator matrix, parsed from onnx-tensorrt's ``docs/operators.md`` (10.1).

The matrix is data, not code: one markdown table, ``| Operator | Supported | Supported Types |
Restrictions |``, plus the sentence that states the opset range the parser accepts. We parse the
file instead of transcribing it so that a newer matrix is a file swap (``$TRANSPRUNE_TRT_OPERATORS``).
Anything we cannot read (no opset sentence, no table, an unknown type name, a cell other than Y/N)
is a ``MatrixFormatError``: a silently half-read matrix would make the lint pass graphs it should
fail.

Where the file comes from (``default_matrix_path``): ``$TRANSPRUNE_TRT_OPERATORS`` if set, else the
copy shipped in this package (``data/``), else ``<repo>/../shared/reference/``. The copy is
Apache-2.0 data from onnx/onnx-tensorrt and keeps its SPDX header.

Needs only the standard library (no onnx), so it can be read anywhere.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from transprune.errors import TransPruneError

MATRIX_FILENAME = "onnx-tensorrt-10.1-operators.md"
ENV_VAR = "TRANSPRUNE_TRT_OPERATORS"

# The type names the matrix uses. FP8 is E4M3 (the only FP8 TensorRT's ONNX parser takes).
KNOWN_TYPES = frozenset(
    {"FP32", "FP16", "BF16", "INT32", "INT64", "BOOL", "UINT8", "INT8", "FP8", "INT4", "DOUBLE"}
)
# Spelling mistakes in the upstream file, mapped to what they mean.
TYPE_TYPOS = {
    # ConstantOfShape's row reads "INF64": there is no such type; INT64 is meant (ConstantOfShape
    # fills int64 tensors in every exported shape computation).
    "INF64": "INT64",
}
# Input names in the Restrictions column that are not the ONNX schema's names.
INPUT_NAME_TYPOS = {
    # Dropout: "`is_traning` must be an initializer"; the ONNX input is `training_mode`.
    "is_traning": "training_mode",
}

_OPSET_SENTENCE = re.compile(r"inclusive\s+range\s+of\s+opset\s+(\d+)\s+to\s+opset\s+(\d+)", re.I)
# "`axes` must be an initializer", "`axes` must be a constant tensor" (Unsqueeze),
# "`depth` must be a build-time constant" (OneHot), "`K` input must be ..." style too. Not
# "`axis` dimension of input must be a build-time constant" (Hardmax: that is about a shape).
_CONSTANT_INPUT = re.compile(
    r"`(\w+)`(?:\s+input)?\s+must\s+be\s+(?:an\s+initializer|a\s+constant\s+tensor|a\s+build-time\s+constant)",
    re.I,
)


class MatrixFormatError(TransPruneError, ValueError):
    """The operator matrix file is not in the format we parse."""


@dataclass(frozen=True)
class OperatorSupport:
    """One row of the matrix. ``types`` uses the matrix's names (FP32, INT64, ...)."""

    supported: bool
    types: frozenset[str]
    restrictions: str = ""

    @property
    def constant_inputs(self) -> tuple[str, ...]:
        """ONNX input names the Restrictions column says must be initializers/constants."""
        names = (INPUT_NAME_TYPOS.get(m.group(1), m.group(1)) for m in _CONSTANT_INPUT.finditer(self.restrictions))
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class OperatorMatrix(Mapping):
    """``{op_type: OperatorSupport}`` plus the default-domain opset range the parser accepts."""

    operators: Mapping[str, OperatorSupport]
    min_opset: int
    max_opset: int
    source: str = "<text>"

    def __getitem__(self, op_type: str) -> OperatorSupport:
        return self.operators[op_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self.operators)

    def __len__(self) -> int:
        return len(self.operators)

    def __hash__(self) -> int:  # frozen dataclass + Mapping: hash by identity of the source
        return hash((self.source, self.min_opset, self.max_opset, len(self.operators)))

    @property
    def opset_range(self) -> tuple[int, int]:
        return self.min_opset, self.max_opset


def _split_row(line: str) -> list[str]:
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return cells


def _parse_types(cell: str, op_type: str, source: str) -> frozenset[str]:
    types = set()
    for raw in cell.split(","):
        name = raw.strip().upper()
        if not name:  # "FP32, FP16, BF16, |" (Selu) has a trailing comma
            continue
        name = TYPE_TYPOS.get(name, name)
        if name not in KNOWN_TYPES:
            raise MatrixFormatError(f"{source}: operator {op_type}: unknown type name {raw.strip()!r}")
        types.add(name)
    return frozenset(types)


def parse_matrix(text: str, source: str = "<text>") -> OperatorMatrix:
    """Parse the markdown of onnx-tensorrt's operators.md."""
    match = _OPSET_SENTENCE.search(text)
    if match is None:
        raise MatrixFormatError(
            f"{source}: no sentence 'inclusive range of opset N to opset M': cannot tell which opsets "
            "the TensorRT parser accepts"
        )
    min_opset, max_opset = int(match.group(1)), int(match.group(2))
    if min_opset > max_opset:
        raise MatrixFormatError(f"{source}: opset range {min_opset}..{max_opset} is empty")

    operators: dict[str, OperatorSupport] = {}
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith("|"):
            if in_table and operators:
                break  # the table ended
            continue
        cells = _split_row(stripped)
        if not in_table:
            if cells and cells[0].lower() == "operator":
                in_table = True
            continue
        if all(set(cell) <= set("-: ") for cell in cells):  # the |---|---| separator
            continue
        op_type = cells[0]
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", op_type):
            raise MatrixFormatError(f"{source}:{number}: not an operator name: {op_type!r}")
        if len(cells) < 2 or cells[1].upper() not in {"Y", "N"}:
            raise MatrixFormatError(f"{source}:{number}: {op_type}: 'Supported' must be Y or N")
        if op_type in operators:
            raise MatrixFormatError(f"{source}:{number}: {op_type} listed twice")
        supported = cells[1].upper() == "Y"
        types = _parse_types(cells[2], op_type, f"{source}:{number}") if len(cells) > 2 else frozenset()
        restrictions = " | ".join(cell for cell in cells[3:] if cell)
        restrictions = restrictions.replace("<br />", " ").replace("<br/>", " ").strip()
        if supported and not types:
            raise MatrixFormatError(f"{source}:{number}: {op_type} is supported but lists no types")
        operators[op_type] = OperatorSupport(supported, types, restrictions)
    if not operators:
        raise MatrixFormatError(f"{source}: no '| Operator | Supported | ...' table found")
    return OperatorMatrix(MappingProxyType(operators), min_opset, max_opset, source)


def packaged_matrix_path() -> Path:
    """The copy shipped inside transprune.export.tensorrt (present in wheels and in the source tree)."""
    return Path(__file__).resolve().parent / "data" / MATRIX_FILENAME


def shared_matrix_path() -> Path:
    """``<repo root>/../shared/reference/<file>``: the project's reference copy, next to the repo."""
    return Path(__file__).resolve().parents[3] / "shared" / "reference" / MATRIX_FILENAME


def default_matrix_path() -> Path:
    """``$TRANSPRUNE_TRT_OPERATORS`` if set, else the packaged copy, else the shared reference."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise TransPruneError(f"${ENV_VAR} is {env!r}, which is not a file; point it at an operators.md")
        return path
    candidates = [packaged_matrix_path(), shared_matrix_path()]
    for path in candidates:
        if path.is_file():
            return path
    raise TransPruneError(
        "TensorRT operator matrix not found; looked at " + ", ".join(str(p) for p in candidates)
        + f". Reinstall transprune or set ${ENV_VAR}."
    )


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> OperatorMatrix:
    return parse_matrix(Path(path).read_text(encoding="utf-8"), source=path)


def load_matrix(path: str | os.PathLike | None = None) -> OperatorMatrix:
    """The parsed matrix at ``path`` (default: ``default_matrix_path()``), cached per path."""
    resolved = Path(path) if path is not None else default_matrix_path()
    if not resolved.is_file():
        raise TransPruneError(f"TensorRT operator matrix {resolved} is not a file")
    return _load_cached(str(resolved.resolve()))
