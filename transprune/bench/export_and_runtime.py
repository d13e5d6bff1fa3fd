"""The benchmarks' one door into :mod:`transprune.export` and :mod:`transprune.runtime`.

Every use of those two packages by :mod:`transprune.bench` goes through here, so that when their
modules move only this file changes. Each import is made inside the function that needs it: the
exporter pulls in torch, and the peak-RSS probe of a runtime build must stay torch-free to measure
what the runtime alone costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def manifest_schema_version() -> int:
    """The manifest schema this transprune writes."""
    from transprune.runtime.manifest import SCHEMA_VERSION

    return SCHEMA_VERSION


def graph_signatures(facts: dict, schedule) -> list[tuple[str, list[str], list[str]]]:
    """(name, input names, output names) of every graph today's exporter writes for a model with
    these facts (a manifest's ``model.facts``) and this schedule."""
    from transprune.export.kinds import graph_specs
    from transprune.family import ModelFacts

    return [(g.name, [t.name for t in g.inputs], [t.name for t in g.outputs])
            for g in graph_specs(ModelFacts(**facts), schedule)]


def export_fp32(*, model: str, out: Path, schedule, progress: Callable[[int, int, str], None]) -> None:
    """Exports ``model`` with ``schedule`` into ``out`` in fp32, without validation, replacing
    whatever is there."""
    from transprune.export.exporter import export_model

    export_model(model=model, out=out, schedule=schedule, dtype="fp32", validate=False, force=out.exists(),
                 progress=progress)


def open_pipeline(path: Path, *, threads: int, verify: bool = True):
    """The torch-free runtime on the build in ``path``, onnxruntime backend."""
    from transprune.runtime.pipeline import Pipeline

    return Pipeline.from_dir(path, backend="onnxruntime", verify=verify, threads=threads)
