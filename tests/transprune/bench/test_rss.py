"""transprune.bench.rss: the one peak-RSS probe, run as ``python -m transprune.bench.rss`` in a
fresh process; the probe of a runtime build never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transprune.bench.rss import peak_rss_in_fresh_process, ru_maxrss_bytes, vm_hwm_bytes


def test_readings_of_this_process():
    assert ru_maxrss_bytes() > 10 * 2**20
    hwm = vm_hwm_bytes()
    if sys.platform.startswith("linux"):
        assert 10 * 2**20 < hwm <= ru_maxrss_bytes()
    else:
        assert hwm is None


def test_the_probe_modules_do_not_import_torch():
    code = "import sys, transprune.bench.rss; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_exactly_one_target():
    with pytest.raises(ValueError):
        peak_rss_in_fresh_process(threads=1, new_tokens=1)
    with pytest.raises(ValueError):
        peak_rss_in_fresh_process(build="b", hf_model="tiny", threads=1, new_tokens=1)


def test_a_failed_probe_raises_with_its_stderr(tmp_path):
    with pytest.raises(RuntimeError, match="peak-RSS probe of .* failed"):
        peak_rss_in_fresh_process(build=tmp_path / "no-build", threads=1, new_tokens=1)


def test_probe_of_a_runtime_build(paper_build):
    pytest.importorskip("onnxruntime")
    build, _ = paper_build
    reading = peak_rss_in_fresh_process(build=build, threads=1, new_tokens=2)
    assert set(reading) == {"peak_rss_bytes", "vm_hwm_bytes", "ru_maxrss_bytes", "ru_maxrss_at_start_bytes",
                            "load_s", "generate_ms", "new_tokens", "torch_imported"}
    assert reading["new_tokens"] == 2 and reading["generate_ms"] > 0 and reading["load_s"] > 0
    assert 10 * 2**20 < reading["peak_rss_bytes"] < 8 * 2**30
    assert reading["torch_imported"] is False  # the runtime alone
