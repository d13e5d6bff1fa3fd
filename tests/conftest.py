"""Shared fixtures: the tiny synthetic checkpoints and their builds, made once per test session.

``paper_build`` is tiny exported with the paper schedule (about a minute, once per session).
``tiny_checkpoint`` is the directory of the ``tiny`` preset (built into a session temp cache, so
tests never touch ``~/.cache``); ``tiny_model`` is that checkpoint loaded through
``transprune.checkpoints.load_llava`` (fp32, eager attention). torch and transformers are
imported only when a test asks for one of them.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

REQUIRE_RTX_ENV = "TRANSPRUNE_REQUIRE_TENSORRT_RTX"


@pytest.fixture
def tensorrt_rtx():
    """The ``tensorrt_rtx`` module (a real TensorRT builder and parser that needs no GPU), or a skip
    that says how to get it. CI sets TRANSPRUNE_REQUIRE_TENSORRT_RTX=1, which turns the skip into a
    failure: there, a graph TensorRT cannot parse or build must fail the run, not skip it."""
    try:
        return importlib.import_module("tensorrt_rtx")
    except ImportError as exc:
        if os.environ.get(REQUIRE_RTX_ENV) == "1":
            pytest.fail(f"{REQUIRE_RTX_ENV}=1 but tensorrt_rtx does not import ({exc}); install the rtx extra")
        pytest.skip(f"needs TensorRT-RTX (pip install tensorrt-rtx-cu12, or scripts/test.sh): {exc}")


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
def schedule_build(tmp_path_factory, tiny_checkpoint, paper_build):
    """``schedule_build(name, dtype="fp32", validate=True)`` -> (build directory, manifest) of tiny
    exported with schedule ``name``: each (name, dtype) exported once per session, shared by every
    test that asks (about a minute each with validation; paper fp32 is ``paper_build``)."""
    import json

    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    root = tmp_path_factory.mktemp("schedules")

    def build(name: str, *, dtype: str = "fp32", validate: bool = True):
        if (name, dtype) == ("paper", "fp32"):
            return paper_build
        out = root / f"{name}-{dtype}{'' if validate else '-unvalidated'}"
        if not out.exists():
            export_model(model=str(tiny_checkpoint), out=out, schedule=preset(name), dtype=dtype, validate=validate)
        return out, json.loads((out / "manifest.json").read_text())

    return build


@pytest.fixture(scope="session")
def iga_only_cli_build(tmp_path_factory, tiny_checkpoint):
    """(build directory, stdout, stderr) of ``transprune-export --schedule iga-only
    --max-text-tokens 256`` on tiny, validated: the CLI test checks what it printed and wrote, the
    TensorRT-RTX test builds its graphs (one export, about a minute, instead of two)."""
    import contextlib
    import io

    from transprune.cli.export import main

    out, printed, errors = tmp_path_factory.mktemp("cli") / "iga", io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(["--model", str(tiny_checkpoint), "--out", str(out), "--schedule", "iga-only",
                     "--max-text-tokens", "256"])
    assert code == 0, errors.getvalue()[-4000:]
    return out, printed.getvalue(), errors.getvalue()


# tiny's hidden size is 64, so its int4 builds use blocks of 32 (the default 128 needs K % 128 == 0)
TINY_INT4_BLOCK = 32


@pytest.fixture(scope="session")
def int4_build(tmp_path_factory, tiny_checkpoint):
    """(build directory, manifest) of ``tiny`` exported with the paper schedule and int4 weights
    (blocks of ``TINY_INT4_BLOCK``), validated: once per session."""
    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    out = tmp_path_factory.mktemp("builds") / "tiny-paper-int4"
    manifest = export_model(model=str(tiny_checkpoint), out=out, schedule=preset("paper"), weight_format="int4",
                            block_size=TINY_INT4_BLOCK)
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
