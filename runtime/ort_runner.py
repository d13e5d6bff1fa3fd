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
        self.sessions, self.inputs, self.outputs = {}, {}, {}
        for graph in graphs:
            session = ort.InferenceSession(str(Path(build_dir) / graph["file"]), options,
                                           providers=providers or ["CPUExecutionProvider"])
            self.sessions[graph["name"]] = session
            # names read once here, not on every call in the decode loop
            self.inputs[graph["name"]] = frozenset(i.name for i in session.get_inputs())
            self.outputs[graph["name"]] = [o.name for o in session.get_outputs()]

    def run(self, name: str, feeds: dict) -> dict:
        wanted = self.inputs[name]
        values = self.sessions[name].run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in wanted})
        return dict(zip(self.outputs[name], values))
