"""Will TensorRT take this graph? The real ONNX parser where one imports, the operator lint always.

``check_graph`` runs both checks on one ONNX file:

- the parser of every TensorRT module that imports here (``tensorrt``, ``tensorrt_rtx``): a real
  parse, which reports each node it rejects (``network.rejected_nodes``). TensorRT-RTX's parser
  is of the same family as TensorRT 10's, so its verdict is strong evidence for a Jetson's
  TensorRT 10.3, though not proof;
- the operator lint (``lint``), which needs no TensorRT, and which also holds TensorRT 10 rules a
  TensorRT-RTX parse would not catch (opset 9..20, TopK's K < 3840, no custom domains).

The exporter records both verdicts per graph in the manifest (``trt_lint``, ``trt_parse``) and
``transprune-export --check-trt DIR`` re-runs them on a build. A parse reads the graph's weights,
so it costs memory about the size of the graph file; graphs are parsed one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transprune.runtime.tensorrt.engines import import_tensorrt, importable_modules

from .lint import LintReport, lint_model
from .network import make_logger, parse_graph


@dataclass(frozen=True)
class ParserVerdict:
    """One parser's verdict on one graph."""

    checker: str  # e.g. "tensorrt_rtx 1.7.1.116 ONNX parser"
    ok: bool
    rejected: tuple[str, ...] = ()  # one line per rejected node

    def to_dict(self) -> dict:
        return {"checker": self.checker, "ok": self.ok, "rejected": list(self.rejected)}


@dataclass
class GraphCheck:
    graph: str
    lint: LintReport
    parsers: list[ParserVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lint.ok and all(p.ok for p in self.parsers)

    @property
    def checkers(self) -> list[str]:
        """What checked this graph, the real parsers first."""
        return [p.checker for p in self.parsers] + [LINT_CHECKER]


LINT_CHECKER = "transprune operator lint (TensorRT 10.1 operator matrix)"


def parse_verdict(path: Path, module: str) -> ParserVerdict:
    """Parses ``path`` with ``module``'s ONNX parser (which prints nothing: what it rejects is the
    verdict's ``rejected``)."""
    trt = import_tensorrt(module)
    parsed = parse_graph(trt, path, logger=make_logger(trt, log=lambda message: None))
    verdict = ParserVerdict(parsed.checker, parsed.ok, tuple(r.describe() for r in parsed.rejected))
    del parsed  # the parsed network holds the graph's weights
    return verdict


def check_graph(path: Path, *, name: str, modules: list[str] | None = None) -> GraphCheck:
    """Lints ``path`` and parses it with each of ``modules`` (default: every TensorRT module that
    imports here; none is fine: the lint alone then)."""
    modules = importable_modules() if modules is None else modules
    return GraphCheck(name, lint_model(path, name=name), [parse_verdict(Path(path), m) for m in modules])


def lint_entry(lint: LintReport) -> dict:
    """A lint report as the manifest and ``--check-trt --json`` record it."""
    return {"ok": lint.ok, "errors": [i.message for i in lint.errors], "warnings": [i.message for i in lint.warnings]}


def manifest_entries(check: GraphCheck) -> dict:
    """The manifest's record of one graph's check: ``trt_lint`` and ``trt_parse``."""
    return {"trt_lint": lint_entry(check.lint), "trt_parse": [p.to_dict() for p in check.parsers]}


def summary(checks: list[GraphCheck]) -> dict:
    """Which checkers ran (the real parsers first, the lint last) and whether every graph passed
    all of them: the manifest's ``trt_check``."""
    return {"ok": all(c.ok for c in checks), "checkers": checks[0].checkers if checks else [LINT_CHECKER]}
