"""Shared fixtures: the tiny synthetic checkpoints and their builds, made once per test session.

``paper_build`` is tiny exported with the paper schedule (about a minute, once per session).
``tiny_checkpoint`` is the directory of the ``tiny`` preset (built into a session temp cache, so
tests never touch ``~/.cache``); ``tiny_model`` is that checkpoint loaded through
``transprune.checkpoints.load_llava`` (fp32, eager attention). torch and transformers are
imported only when a test asks for one of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def transprune_cache(tmp_path_factory) -> Path:
    """A session-wide transprune cache directory (synthetic checkpoints are built here)."""
    return tmp_path_factory.mktemp("transprune-cache")


@pytest.fixture(scope="session")
def tiny_checkpoint(transprune_cache) -> Path:
    """The directory of the built ``tiny`` synthetic checkpoint (llava-hf format)."""
    from transprune.synthetic import ensure_synthetic_checkpoint

    return ensure_synthetic_checkpoint("tiny", cache_dir=transprune_cache)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint, transprune_cache):
    """``LoadedModel`` of ``tiny`` (model in eval mode, processor, preset, path). Do not mutate it."""
    from transprune.checkpoints import load_llava

    return load_llava("tiny", cache_dir=transprune_cache)


@pytest.fixture(scope="session")
def paper_build(tmp_path_factory, tiny_checkpoint):
    """(build directory, manifest) of ``tiny`` exported with the paper schedule, validated."""
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    out = tmp_path_factory.mktemp("builds") / "tiny-paper"
    manifest = export_model(model=str(tiny_checkpoint), out=out, schedule=preset("paper"))
    return out, manifest


@pytest.fixture(scope="session")
def tiny_next_model(transprune_cache):
    """``LoadedModel`` of ``tiny-next`` (LLaVA-NeXT: anyres tiles on the 7B's grid pinpoints)."""
    from transprune.checkpoints import load_llava

    return load_llava("tiny-next", cache_dir=transprune_cache)


@pytest.fixture(scope="session")
def next_build(tmp_path_factory, transprune_cache):
    """(build directory, manifest) of ``tiny-next`` exported with the paper schedule, validated
    (about a minute and a half, once per session)."""
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    out = tmp_path_factory.mktemp("builds") / "tiny-next-paper"
    manifest = export_model(model="tiny-next", out=out, schedule=preset("paper"), cache_dir=transprune_cache)
    return out, manifest
