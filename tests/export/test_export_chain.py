"""Export the tiny model and run the exported chain next to the PyTorch reference.

Work in progress toward the exporter issue: the export/validate path works end to end for the
paper schedule; CLI, per-graph multi-length validation and the TensorRT lint wiring come next.
"""

import json

import numpy as np
import pytest

from transprune.errors import TransPruneError
from transprune.schedule import preset


@pytest.fixture(scope="module")
def paper_build(tmp_path_factory, tiny_checkpoint):
    from transprune.export.exporter import export_model

    out = tmp_path_factory.mktemp("builds") / "tiny-paper"
    manifest = export_model(model=str(tiny_checkpoint), out=out, schedule=preset("paper"))
    return out, manifest


def test_paper_chain_matches_reference(paper_build):
    out, manifest = paper_build
    validation = manifest["validation"]
    assert validation["stages_identical"] == 3 and len(validation["tokens"]) == 16
    assert validation["max_logit_error"] < 1e-4
    kinds = [g["kind"] for g in manifest["graphs"]]
    assert kinds == ["vision", "embed", "prefill_inputs", "segment", "scorer", "segment", "scorer",
                     "segment", "scorer", "segment", "head"]
    assert [g["layers"] for g in manifest["graphs"] if g["kind"] == "segment"] == [[1, 7], [8, 9], [10, 12], [13, 14]]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["keep_counts"] == [504, 360, 72]
    for graph in on_disk["graphs"]:
        assert (out / graph["file"]).is_file()
        assert graph["trt_lint"]["ok"], (graph["name"], graph["trt_lint"]["errors"])


def test_existing_directory_is_refused_without_force(paper_build, tmp_path):
    from transprune.export.exporter import export_model

    out, _ = paper_build
    with pytest.raises(TransPruneError, match="already exists; pass --force"):
        export_model(model="tiny", out=out, schedule=preset("paper"))


def test_failure_midway_leaves_nothing(tmp_path, tiny_checkpoint, monkeypatch):
    from transprune.export import exporter, onnx_writer

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_writer, "export_graph", explode)
    with pytest.raises(OSError):
        exporter.export_model(model=str(tiny_checkpoint), out=tmp_path / "build", schedule=preset("paper"))
    assert list(tmp_path.iterdir()) == []
