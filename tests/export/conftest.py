"""Builds shared by the export tests: each schedule is exported once per session (about 60 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def paper_build(tmp_path_factory, tiny_checkpoint):
    """(build directory, manifest) of ``tiny`` exported with the paper schedule, validated."""
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    out = tmp_path_factory.mktemp("builds") / "tiny-paper"
    manifest = export_model(model=str(tiny_checkpoint), out=out, schedule=preset("paper"))
    return out, manifest
