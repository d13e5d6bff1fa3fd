"""transprune.bench.builds: where a benchmark build lives and when one already there is reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from transprune.bench.builds import build_dir, stale_reason  # noqa: E402
from transprune.schedule import preset  # noqa: E402
from transprune.runtime.manifest import SCHEMA_VERSION  # noqa: E402


def test_build_dir_is_model_dash_schedule_under_exports():
    assert build_dir(Path("exports"), "tiny", "paper") == Path("exports/tiny-paper")
    # a checkpoint path as --model names the build after its last part
    assert build_dir(Path("e"), "/ckpt/llava-x", "none") == Path("e/llava-x-none")
    # int4 builds get a suffix, the name bench_weights.py gives its int4 paper build (both reuse it)
    assert build_dir(Path("exports"), "bench", "none", "int4") == Path("exports/bench-none-int4")


def test_a_build_from_an_older_exporter_is_not_reused(paper_build, tmp_path):
    """Reuse needs the same schedule, checkpoint and dtype, and today's graph inputs and outputs: a
    build whose scorers lack an output the exporter now writes is exported afresh."""
    build, manifest = paper_build
    checkpoint = Path(manifest["model"]["checkpoint"])
    assert stale_reason(build, preset("paper"), checkpoint) is None
    assert "schedule" in stale_reason(build, preset("ttv-only"), checkpoint)
    older = shutil.copytree(build, tmp_path / "older")
    data = json.loads((older / "manifest.json").read_text())
    for graph in data["graphs"]:
        graph["outputs"] = [t for t in graph["outputs"] if t["name"] not in ("ttv_score", "iga_score")]
    (older / "manifest.json").write_text(json.dumps(data))
    assert "an older exporter wrote it" in stale_reason(older, preset("paper"), checkpoint)
    data["schema_version"] = 2  # written before LLaVA-NeXT builds changed the manifest
    (older / "manifest.json").write_text(json.dumps(data))
    assert f"manifest schema is 2, this transprune writes {SCHEMA_VERSION}" in stale_reason(older, preset("paper"),
                                                                                         checkpoint)


def test_no_build_or_an_unreadable_manifest_is_not_reused(tmp_path):
    assert stale_reason(tmp_path / "missing", preset("paper"), tmp_path) == "no build there"
    (tmp_path / "manifest.json").write_text("{not json")
    assert stale_reason(tmp_path, preset("paper"), tmp_path).startswith("unreadable manifest")
