"""scripts/bench_serve.py on the session's tiny paper build (``--build``, no export): two servers
(batching off and on), 1 and 2 clients, 3 tokens each; the JSON holds real measurements (every
request answered, timings that are positive and consistent with each other, the batch sizes the
servers counted) and stdout the table docs/performance.md quotes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_serve.py"
NEW_TOKENS = 3


def load_script():
    spec = importlib.util.spec_from_file_location("bench_serve_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_writes_real_measurements_and_a_table(paper_build, tmp_path):
    out = tmp_path / "bench_serve.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = load_script().main(["--build", str(paper_build[0]), "--clients", "1,2", "--new-tokens",
                                   str(NEW_TOKENS), "--threads", "1", "--min-requests", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["failures"] == []
    assert [(c["batching"], c["max_batch"], c["clients"]) for c in report["cells"]] == [
        ("off", 1, 1), ("off", 1, 2), ("on", 16, 1), ("on", 16, 2)]
    for cell in report["cells"]:
        assert cell["requests"] == cell["clients"] and cell["errors"] == 0
        assert 0 < cell["completion_tokens"] <= cell["requests"] * NEW_TOKENS
        assert cell["wall_s"] > 0
        assert cell["requests_per_s"] == pytest.approx(cell["requests"] / cell["wall_s"], rel=1e-2)
        assert cell["tokens_per_s"] == pytest.approx(cell["completion_tokens"] / cell["wall_s"], rel=1e-2)
        samples = cell["samples"]
        assert len(samples) == cell["requests"]
        assert all(0 < s["ttft_s"] <= s["latency_s"] <= cell["wall_s"] + 0.01 for s in samples)
        assert 0 < cell["ttft_p50_s"] <= cell["ttft_p95_s"] <= max(s["latency_s"] for s in samples)
        assert 1 <= cell["mean_batch_size"] <= (1 if cell["batching"] == "off" else cell["clients"])
        assert 0 < cell["server_ttft_mean_s"] <= max(s["ttft_s"] for s in samples)
        assert 0 < cell["server_token_mean_s"] < cell["wall_s"]
    assert len(report["load_before"]) == 3 and len(report["load_after"]) == 3
    assert report["machine"]["cpu_count"] >= 1
    lines = stdout.getvalue().splitlines()
    assert lines[0].startswith("| batching | clients |") and len([x for x in lines if x.startswith("| o")]) == 4
    assert (tmp_path / "bench_serve_on.log").is_file()
