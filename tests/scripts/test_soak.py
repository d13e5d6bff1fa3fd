"""scripts/soak.py: a small soak (12 generations, 2 threads x 3) on the session's tiny paper build
writes a complete report, and its answer check can fail.

The script's ``main`` runs in this process with ``--build`` on the session's ``paper_build`` (no
export; the reference answers each request on a fresh Pipeline of its own: 24 small loads). Then
the check itself is tested: the same run fed a deliberately corrupted reference (request 0's
tokens and text, request 4's text only) must count exactly the answers of those requests as wrong,
streamed ones (judged by their text) included, and exit 1. The phase with threads sharing one
Pipeline is only checked for consistency (every generation is either checked or an exception):
whether sharing is safe is what the benchmark reports, not what this test decides.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the paper_build fixture exports
pytest.importorskip("onnxruntime")

from transprune.bench import soak, soak_report, soak_requests  # noqa: E402
from transprune.bench.rss import current_rss_bytes  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
GENERATIONS, WORKERS, PER_WORKER, NEW_TOKENS = 12, 2, 3, 4
REQUESTS = len(soak_requests.IMAGES) * len(soak_requests.PROMPTS) * 2


def load_script():
    """scripts/soak.py as a module (scripts/ is not a package), for its ``main``."""
    spec = importlib.util.spec_from_file_location("soak_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


soak_script = load_script()


def run_main(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = soak_script.main(argv)
    return code, stdout.getvalue()


def small_args(build: Path, out: Path) -> list[str]:
    return ["--build", str(build), "--generations", str(GENERATIONS), "--workers", str(WORKERS),
            "--per-worker", str(PER_WORKER), "--new-tokens", str(NEW_TOKENS), "--threads", "1",
            "--progress-every", "5", "--out", str(out)]


@pytest.fixture(scope="module")
def report(tmp_path_factory, paper_build):
    build, _ = paper_build
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    code, stdout = run_main(small_args(build, out))
    return json.loads(out.read_text()), code, stdout, build


def test_config_requests_and_reference(report):
    data, _, _, build = report
    config = data["config"]
    assert data["status"] == "complete"
    assert (config["generations"], config["workers"], config["per_worker"], config["new_tokens"],
            config["threads"]) == (GENERATIONS, WORKERS, PER_WORKER, NEW_TOKENS, 1)
    assert config["build"] == {"path": str(build), "reused": True, "export_s": None, "given": True}
    assert config["machine"]["versions"]["onnxruntime"] and config["loadavg_after"] is not None
    assert config["requests"] == REQUESTS == len(data["requests"])
    assert len({r["name"] for r in data["requests"]}) == REQUESTS
    assert len({r["image"] for r in data["requests"]}) == len(soak_requests.IMAGES)
    assert {r["temperature"] for r in data["requests"]} == {0.0, config["temperature"]}
    seeds = [r["seed"] for r in data["requests"] if r["temperature"] > 0]
    assert len(seeds) == REQUESTS // 2 == len(set(seeds))
    reference = data["reference"]
    assert len(reference["answers"]) == REQUESTS
    assert all(len(a["tokens"]) == NEW_TOKENS for a in reference["answers"])  # EOS ignored
    assert reference["distinct_answers"] >= 2  # otherwise a wrong answer could not be seen
    assert reference["stream_differs_from_generate"] == []


def test_soak_phase_is_correct_and_samples_rss(report):
    data, _, _, _ = report
    soaked = data["soak"]
    assert soaked["generations"] == soaked["checked"] == GENERATIONS
    assert (soaked["wrong"], soaked["exceptions"]) == (0, 0)
    assert (soaked["warmup"]["checked"], soaked["warmup"]["wrong"], soaked["warmup"]["exceptions"]) == (REQUESTS, 0, 0)
    assert len(soaked["wall_ms"]) == GENERATIONS and all(ms > 0 for ms in soaked["wall_ms"])
    samples = soaked["rss_samples"]
    assert [n for n, _ in samples] == list(range(GENERATIONS + 1))  # after the warm-up, then every generation
    rss = soaked["rss"]
    if sys.platform.startswith("linux"):
        assert all(b > 10 * 2**20 for _, b in samples)
        assert rss["start_mib"] == round(samples[0][1] / 2**20, 2)
        assert rss["end_mib"] == round(samples[-1][1] / 2**20, 2)
        assert rss["max_mib"] >= max(rss["start_mib"], rss["end_mib"])
        assert isinstance(rss["slope_mib_per_100_second_half"], float)


def test_thread_phases_account_for_every_generation(report):
    data, _, _, _ = report
    for key in ("threads_shared", "threads_control"):
        phase = data[key]
        assert (phase["workers"], phase["per_worker"], phase["generations"]) == (WORKERS, PER_WORKER,
                                                                                WORKERS * PER_WORKER)
        assert phase["hung_workers"] == [] and phase["completed"] == WORKERS * PER_WORKER
        assert phase["checked"] + phase["exceptions"] == WORKERS * PER_WORKER
        assert phase["streamed"] == 2  # worker 0's third, worker 1's second
        assert sum(phase["errors"].values()) == phase["exceptions"]
        assert phase["wall_s"] > 0 and len(phase["worker_wall_s"]) == WORKERS
    control = data["threads_control"]
    assert (control["wrong"], control["exceptions"]) == (0, 0)  # a Pipeline per thread is always right


def test_exit_code_and_summary_follow_the_failures(report):
    data, code, stdout, _ = report
    assert data["failures"] == soak_report.failures(data)
    assert code == (1 if data["failures"] else 0)
    lines = stdout.splitlines()
    assert lines[0].startswith(f"soak: {GENERATIONS} generations on one Pipeline")
    assert lines[1].startswith("RSS: start ") and "MiB per 100 generations" in lines[1]
    assert lines[2].startswith(f"wrong answers: soak 0/{GENERATIONS}")
    assert any(line.startswith(f"{WORKERS} threads sharing one Pipeline: wrong answers") for line in lines)
    assert any(line.startswith(f"{WORKERS} threads one Pipeline per thread: wrong answers 0/") for line in lines)
    assert lines[-1].startswith("JSON: ")


def test_a_corrupted_reference_is_counted_and_fails_the_run(report, tmp_path, monkeypatch, capsys):
    data, _, _, build = report
    answers = [soak_requests.Answer(list(a["tokens"]), a["text"]) for a in data["reference"]["answers"]]
    tokens0 = list(answers[0].tokens)
    tokens0[-1] = (tokens0[-1] + 1) % 50
    answers[0] = soak_requests.Answer(tokens0, answers[0].text + " (corrupted)")
    answers[4] = soak_requests.Answer(answers[4].tokens, answers[4].text + " (corrupted)")  # text only: streams see it
    checks = {"distinct_answers": data["reference"]["distinct_answers"], "stream_differs_from_generate": [],
              "wall_s": 0.0}
    monkeypatch.setattr(soak, "reference_answers", lambda build, requests, settings: (answers, checks))
    out = tmp_path / "corrupted.json"
    code, stdout = run_main(small_args(build, out))
    corrupted = json.loads(out.read_text())

    assert code == 1
    soaked = corrupted["soak"]
    # generations 1..12 are requests 0..11: requests 0 and 4 once each; the warm-up pass has every request once
    assert soaked["wrong"] == 2 and soaked["wrong_by_request"] == {"0": 1, "4": 1}
    assert soaked["warmup"]["wrong"] == 2
    by_request = {d["request"]: d for d in soaked["wrong_details"]}
    assert by_request[0]["why"].startswith("tokens ") and by_request[4]["why"].startswith("text ")
    # threads: worker 0 makes requests 0, 2, 4 (the third streamed), worker 1 makes 1, 3, 5
    control = corrupted["threads_control"]
    assert control["wrong"] == 2 and control["wrong_by_request"] == {"0": 1, "4": 1}
    assert {(d["request"], d["streamed"]) for d in control["wrong_details"]} == {(0, False), (4, True)}
    assert any(f.startswith("soak: 2 of 12 answers wrong") for f in corrupted["failures"])
    assert any(f.startswith("one Pipeline per thread: 2 of 6 answers wrong") for f in corrupted["failures"])
    assert "FAILED: soak: 2 of 12 answers wrong" in capsys.readouterr().err
    assert f"wrong answers: soak 2/{GENERATIONS}" in stdout


def test_current_rss():
    rss = current_rss_bytes()
    if sys.platform.startswith("linux"):
        assert rss > 10 * 2**20
    else:
        assert rss is None
