"""scripts/bench_next.py: a ``--quick`` run on ``tiny-next`` writes a complete, consistent report.

Runs the script's ``main`` in this process (``--quick --threads 1``: tiny-next, the 2:1 strip and the
square image, 1 repetition, 2 new tokens) with ``TRANSPRUNE_CACHE`` pointing at the session cache.
The session's ``next_build`` (tiny-next, paper schedule) is copied into the exports folder first, so
the script reuses it and exports only the unpruned build (about 45 s on 2 cores; the runs take a few
seconds). Timings are never compared with a target (a shared machine makes them noise); only that
they exist, are positive, and that the medians, ratios, FLOPs ratios, image-token counts and kept
counts are what the raw samples and the FLOPs model say they must be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from transprune.flops import flops_report  # noqa: E402
from transprune.presets import model_preset  # noqa: E402
from transprune.schedule import preset  # noqa: E402

from transprune.bench import next_image_sizes  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_next.py"


def load_script():
    """scripts/bench_next.py as a module (scripts/ is not a package), for its ``main``."""
    spec = importlib.util.spec_from_file_location("bench_next_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_next = load_script()

NEW_TOKENS = 2  # --quick
# image tokens of these sizes on LLaVA-NeXT-7B's grid pinpoints (tiny-next uses the same ones)
QUICK_COUNTS = {("wide 2:1", 800, 400): 1752, ("square", 672, 672): 2928}
RATIOS = (0.875, 0.625, 0.125)


def run_main(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = bench_next.main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory, next_build, transprune_cache):
    build, _ = next_build
    root = tmp_path_factory.mktemp("bench-next")
    exports, out = root / "exports", root / "bench_next.json"
    shutil.copytree(build, exports / "tiny-next-paper")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSPRUNE_CACHE", str(transprune_cache))
        code, stdout = run_main(["--quick", "--threads", "1", "--exports", str(exports), "--out", str(out)])
    assert code == 0, stdout
    return json.loads(out.read_text()), stdout, exports


def test_builds_config_and_machine(report):
    data, _, exports = report
    config = data["config"]
    assert (config["model"], config["repeats"], config["new_tokens"], config["threads"]) == ("tiny-next", 1, 2, 1)
    assert config["quick"] is True and config["num_layers"] == 14
    assert config["builds"]["pruned"] == {"path": str(exports / "tiny-next-paper"), "reused": True, "export_s": None}
    assert config["builds"]["unpruned"]["reused"] is False
    manifest = json.loads((exports / "tiny-next-none" / "manifest.json").read_text())
    assert manifest["schedule"] == preset("none").to_dict() and "validation" not in manifest
    assert config["schedules"] == {"pruned": preset("paper").to_dict(), "unpruned": preset("none").to_dict()}
    assert config["machine"]["cpu_count"] == os.cpu_count() and config["machine"]["platform"]
    assert config["machine"]["versions"]["onnxruntime"]
    assert data["checks"] == {"image_tokens_match_schedule": True, "distinct_image_token_counts": True,
                              "failures": []}


def test_one_entry_per_image_each_with_its_own_token_count_and_kept_counts(report):
    data, _, _ = report
    entries = data["images"]
    assert [(e["name"], e["width"], e["height"]) for e in entries] == list(QUICK_COUNTS)
    assert [e["image_tokens"] for e in entries] == list(QUICK_COUNTS.values())  # distinct
    text_tokens = {e["text_tokens"] for e in entries}
    assert len(text_tokens) == 1 and text_tokens.pop() > 0  # one prompt for every image
    for entry in entries:
        n = entry["image_tokens"]
        assert entry["prompt_tokens"] == entry["text_tokens"] + n
        pruned = [n, *(int(n * r) for r in RATIOS)]
        assert entry["kept_image_tokens"] == {"pruned": pruned, "unpruned": [n]}
        for kind, wanted in (("pruned", pruned), ("unpruned", [n])):
            runs = [entry["warmup"][kind], *entry["samples"][kind]]
            assert len(runs) == 2  # a warm-up and one repetition
            assert all(run["image_tokens"] == wanted for run in runs)
            assert all(run["prompt_tokens"] == entry["prompt_tokens"] for run in runs)
        assert all(entry["checks"].values())


def test_medians_and_ratios_come_from_the_raw_samples(report):
    data, _, _ = report
    for entry in data["images"]:
        samples = entry["samples"]
        for kind in ("pruned", "unpruned"):
            (sample,) = samples[kind]
            assert sample["new_tokens"] == NEW_TOKENS and sample["decode_steps"] == NEW_TOKENS - 1
            assert sample["prefill_ms"] > 0 and sample["decode_ms_per_token"] > 0 and sample["wall_ms"] > 0
            assert sample["timings"]["prefill_total"] == sample["prefill_ms"]
            for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token"):
                assert entry["medians"][kind][key] == statistics.median(s[key] for s in samples[kind])
        assert set(samples["pruned"][0]["timings"]) >= {"vision", "segment_0", "segment_3", "scorer_2", "head"}
        for key in ("prefill_ms", "decoder_prefill_ms", "decode_ms_per_token"):
            name = key.replace("_ms", "") + "_pruned_over_unpruned"
            ratio = entry["ratios"][name]
            assert isinstance(ratio, float) and ratio > 0, name
            paired = statistics.median(p[key] / u[key] for p, u in zip(samples["pruned"], samples["unpruned"]))
            assert ratio == pytest.approx(paired, rel=1e-12), name


def test_flops_ratio_is_the_flops_model_for_that_image(report):
    data, _, _ = report
    ratios = set()
    for entry in data["images"]:
        n, text = entry["image_tokens"], entry["text_tokens"]
        expected = flops_report(model=dataclasses.replace(model_preset("tiny-next"), n_image_tokens=n),
                                schedule=preset("paper"), text_tokens=text).whole_with_iga_ratio
        assert entry["flops"]["whole_with_iga_ratio"] == pytest.approx(expected, rel=1e-12)
        assert entry["flops"]["report"]["model"]["n_image_tokens"] == n
        assert 0 < expected < 1
        ratios.add(round(expected, 9))
        assert entry["measured_over_flops"] == pytest.approx(entry["ratios"]["prefill_pruned_over_unpruned"] / expected)
    assert len(ratios) == 2  # each image's own n gives its own figure


def test_prints_one_table_row_per_image(report):
    data, stdout, _ = report
    lines = stdout.splitlines()
    assert lines[0].startswith("| image (W x H) | image tokens n -> kept |") and lines[1].startswith("|---")
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(data["images"]) == 2
    for row, entry in zip(rows, data["images"]):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(lines[0].strip("|").split("|"))
        assert cells[0] == f"{entry['name']} {entry['width']}x{entry['height']}"
        assert cells[1] == " -> ".join(map(str, entry["kept_image_tokens"]["pruned"]))
        assert cells[4] == f"{entry['ratios']['prefill_pruned_over_unpruned']:.3f}"
        assert cells[5] == f"{entry['flops']['whole_with_iga_ratio']:.3f}"
    assert "JSON: " in stdout


def test_wrong_kept_counts_exit_1_with_an_error_line(report, transprune_cache, tmp_path, monkeypatch, capsys):
    """A run whose image_tokens differ from the schedule's keep counts is reported, and the exit is 1
    (both builds are reused; one small image keeps it to a few seconds)."""
    _, _, exports = report
    monkeypatch.setenv("TRANSPRUNE_CACHE", str(transprune_cache))
    monkeypatch.setattr(next_image_sizes, "QUICK_IMAGES", (("small", 336, 224),))
    real = next_image_sizes.expected_image_tokens
    monkeypatch.setattr(next_image_sizes, "expected_image_tokens",
                        lambda n: {**real(n), "pruned": [n, *(k + 1 for k in real(n)["pruned"][1:])]})
    out = tmp_path / "bad.json"
    code, _ = run_main(["--quick", "--threads", "1", "--exports", str(exports), "--out", str(out)])
    assert code == 1
    data = json.loads(out.read_text())
    assert data["checks"]["image_tokens_match_schedule"] is False and data["checks"]["failures"]
    assert all(b["reused"] for b in data["config"]["builds"].values())
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert errors and "paper build's image_tokens" in errors[0] and "!= expected" in errors[0]
