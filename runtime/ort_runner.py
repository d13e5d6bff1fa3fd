"""onnxruntime sessions for a build's graphs behind the chain's ``run(name, feeds)`` call."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OrtGraphs:
    def __init__(self, build_dir: Path, graphs: list[dict], *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.sessions = {}
        self.outputs = {}
        for graph in graphs:
            session = ort.InferenceSession(str(Path(build_dir) / graph["file"]), options,
                                           providers=providers or ["CPUExecutionProvider"])
            self.sessions[graph["name"]] = session
            self.outputs[graph["name"]] = [o.name for o in session.get_outputs()]
            self.inputs = None

    def run(self, name: str, feeds: dict) -> dict:
        session = self.sessions[name]
        wanted = {i.name for i in session.get_inputs()}
        values = session.run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in wanted})
        return dict(zip(self.outputs[name], values))
