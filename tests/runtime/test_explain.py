"""transprune-explain: the scores come from the exported chain, and the patches drawn as kept are
exactly the runtime's kept indices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from transprune.runtime.build import Build
from transprune.runtime.explain import DIM, draw, explain, panel_layout
from transprune.runtime.pipeline import Pipeline
from transprune.sample_image import sample_image

PROMPT = "What is in the picture?"


@pytest.fixture(scope="module")
def pipeline(paper_build):
    with Pipeline.from_dir(paper_build[0]) as opened:
        yield opened


def _patch_centres(png: Image.Image, panel: int, size: int, grid: int, gap: int, top: int) -> np.ndarray:
    """[grid * grid, 3] colours at the centre of every patch of panel ``panel`` of a drawn PNG."""
    pixels = np.asarray(png.convert("RGB"), dtype=np.float64)
    patch = size // grid
    left = gap + panel * (size + gap)
    centres = [(top + r * patch + patch // 2, left + c * patch + patch // 2) for r in range(grid) for c in range(grid)]
    return np.array([pixels[y, x] for y, x in centres])


def test_patches_drawn_as_kept_are_exactly_the_runtimes_kept_indices(pipeline, tmp_path):
    # a flat grey picture: a kept patch is tinted (bright), a pruned one grey at DIM of 200
    grey = Image.new("RGB", (420, 350), (200, 200, 200))
    explanation = explain(pipeline, grey, PROMPT, max_new_tokens=2)
    independent = pipeline.generate(grey, PROMPT, max_new_tokens=2)
    assert [s.kept for s in explanation.stages] == independent.kept
    png = draw(explanation)
    png.save(tmp_path / "explain.png")
    reread = Image.open(tmp_path / "explain.png")
    panels, width, height = panel_layout(explanation)
    assert panels == 4 and reread.size == (width, height) == (8 + 4 * (336 + 8), 22 + 336 + 16)
    assert (explanation.grid, explanation.image.shape) == (24, (336, 336, 3))
    for number, stage in enumerate(explanation.stages, start=1):
        centres = _patch_centres(reread, number, 336, 24, 8, 22 + 8)
        pruned = np.all(np.abs(centres - 200 * DIM) <= 1, axis=1)
        assert sorted(np.flatnonzero(~pruned).tolist()) == stage.kept, stage.after_layer
    # the input panel is the picture itself, untouched
    assert np.all(np.abs(_patch_centres(reread, 0, 336, 24, 8, 30) - 200) <= 1)


def test_stage_scores_are_the_scorers_parts_and_match_the_torch_backend(pipeline, paper_build):
    image = sample_image()
    explanation = explain(pipeline, image, PROMPT, max_new_tokens=1)
    assert [(s.after_layer, s.tokens_before, s.keep) for s in explanation.stages] == [
        (7, 576, 504), (9, 504, 360), (12, 360, 72)]
    for stage in explanation.stages:
        ttv, iga, score = (np.asarray(v) for v in (stage.ttv, stage.iga, stage.score))
        assert len(stage.scored) == stage.tokens_before == len(score) == len(ttv) == len(iga)
        # both parts are normalised to sum 1 over the tokens scored; the score is their mean (alpha 0.5)
        assert ttv.sum() == pytest.approx(1.0, abs=1e-4) and iga.sum() == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(score, 0.5 * ttv + 0.5 * iga, atol=1e-6)
        # the kept tokens are the top-k of the score
        top = np.asarray(stage.scored)[np.argsort(-score, kind="stable")[:stage.keep]]
        assert sorted(top.tolist()) == stage.kept
    # the next stage scores exactly what this one kept
    for before, after in zip(explanation.stages, explanation.stages[1:]):
        assert after.scored == before.kept
    with Pipeline(pipeline.build, _torch_backend(paper_build)) as reference:
        expected = explain(reference, image, PROMPT, max_new_tokens=1)
    for got, want in zip(explanation.stages, expected.stages):
        assert got.kept == want.kept
        np.testing.assert_allclose(got.ttv, want.ttv, atol=1e-5)
        np.testing.assert_allclose(got.iga, want.iga, atol=1e-5)


def _torch_backend(paper_build):
    pytest.importorskip("torch")
    from transprune.runtime.backend import ReferenceBackend

    return ReferenceBackend(Build.open(paper_build[0]))


def test_cli_writes_png_and_json_and_refuses_bad_output(paper_build, tmp_path, capsys):
    from transprune.cli.explain import main

    image = tmp_path / "picture.png"
    sample_image().save(image)
    out, report = tmp_path / "explain.png", tmp_path / "explain.json"
    assert main([str(paper_build[0]), "--image", str(image), "--prompt", PROMPT, "--out", str(out),
                 "--json", str(report), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "image tokens 576 -> 504 -> 360 -> 72; wrote" in captured.err
    data = json.loads(report.read_text())
    assert Image.open(out).size == (1384, 374)
    assert [len(s["kept"]) for s in data["stages"]] == [504, 360, 72] and len(data["tokens"]) == 3
    assert data["text"] + "\n" == captured.out
    assert main([str(paper_build[0]), "--image", str(image), "--prompt", PROMPT, "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must name a .png file" in capsys.readouterr().err
    assert main([str(paper_build[0]), "--image", str(tmp_path / "missing.png"), "--prompt", PROMPT,
                 "--out", str(tmp_path / "y.png")]) == 2
    assert "missing.png" in capsys.readouterr().err and not (tmp_path / "y.png").exists()
