"""transprune-explain on a LLaVA-NeXT build (tiny-next): every image token's patch on the base tile
or the high-res canvas, the patches drawn as kept exactly the runtime's kept indices, the views
the pixels the vision tower saw."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from transprune.runtime.anyres import _kept_window, best_resolution
from transprune.runtime.explain import (
    DIM,
    PANEL_GAP,
    TITLE_HEIGHT,
    draw,
    explain,
    input_panel,
    panel_layout,
    stage_panel,
    view_layout,
)
from transprune.runtime.pipeline import Pipeline
from transprune.sample_image import sample_image

PROMPT = "What is in the picture?"
# (width, height): landscape 4:3 on a 2 x 2 tile canvas with rows cut by unpadding; a 1:3 strip (3 x 1 tiles)
SIZES = ((640, 480), (330, 1000))
GREY = 200


@pytest.fixture(scope="module")
def pipeline(next_build):
    with Pipeline.from_dir(next_build[0]) as opened:
        yield opened


@pytest.fixture(scope="module")
def grey_runs(pipeline):
    """Per size: (explanation, an independent generation) of a flat grey picture."""
    runs = {}
    for width, height in SIZES:
        grey = Image.new("RGB", (width, height), (GREY,) * 3)
        runs[width, height] = (explain(pipeline, grey, PROMPT, max_new_tokens=2),
                               pipeline.generate(grey, PROMPT, max_new_tokens=2))
    return runs


def _centres(png: np.ndarray, explanation, panel: int, view: int) -> dict[int, np.ndarray]:
    """token -> colour at the centre of its block on view ``view`` of panel ``panel`` of a drawn PNG."""
    panel_width, _, places = view_layout(explanation)
    top = TITLE_HEIGHT + PANEL_GAP + places[view][0]
    left = PANEL_GAP + panel * (panel_width + PANEL_GAP) + places[view][1]
    shown = explanation.views[view]
    s = shown.shrink
    return {token: png[top + (y0 // s + y1 // s) // 2, left + (x0 // s + x1 // s) // 2]
            for token, (y0, y1, x0, x1) in shown.blocks.items()}


@pytest.mark.parametrize("size", SIZES)
def test_patches_drawn_as_kept_are_exactly_the_runtimes_kept_indices(grey_runs, size, tmp_path):
    """Read back from the saved PNG: on both views, a block is undimmed at a stage exactly when the
    runtime kept its token. On a flat grey picture a kept block is tinted, a pruned one is the
    input's pixel grey at DIM (the black canvas padding included)."""
    explanation, independent = grey_runs[size]
    assert [s.kept for s in explanation.stages] == independent.kept
    draw(explanation).save(tmp_path / "explain.png")
    reread = Image.open(tmp_path / "explain.png")
    panels, width, height = panel_layout(explanation)
    assert panels == 4 and reread.size == (width, height)
    png = np.asarray(reread.convert("RGB"), dtype=np.float64)
    for view in (0, 1):
        inputs = _centres(png, explanation, 0, view)
        for number, stage in enumerate(explanation.stages, start=1):
            drawn = _centres(png, explanation, number, view)
            undimmed = sorted(token for token, colour in drawn.items()
                              if np.any(np.abs(colour - np.rint(inputs[token].mean() * DIM)) > 1))
            expected = sorted(set(stage.kept) & set(explanation.views[view].blocks))
            assert undimmed == expected, (size, view, stage.after_layer)
            assert expected  # both views keep something at every stage here, so the check has teeth
    # the input panel's base tile is the flat grey picture, untouched
    assert all(np.all(colour == GREY) for colour in _centres(png, explanation, 0, 0).values())


@pytest.mark.parametrize("size", SIZES)
def test_every_token_but_the_newlines_has_one_block_and_blocks_do_not_overlap(pipeline, grey_runs, size):
    """Base tile tokens 0..575 in row-major order; then the canvas window row by row, each row
    followed by one newline token, which has no block."""
    explanation, _ = grey_runs[size]
    base, canvas = explanation.views
    width, height = size
    plan = pipeline.images.plan((height, width))
    newlines = set(np.flatnonzero(plan < 0).tolist())
    assert len(base.blocks) + len(canvas.blocks) + len(newlines) == explanation.n_image == len(plan)
    assert set(base.blocks).isdisjoint(canvas.blocks) and newlines.isdisjoint({*base.blocks, *canvas.blocks})
    assert set(base.blocks) | set(canvas.blocks) | newlines == set(range(explanation.n_image))
    for view in (base, canvas):
        painted = np.zeros(view.picture.shape[:2], dtype=int)
        for top, bottom, left, right in view.blocks.values():
            assert (bottom - top, right - left) == (14, 14)
            painted[top:bottom, left:right] += 1
        assert painted.max() == 1 and painted.sum() == 14 * 14 * len(view.blocks)
    assert [base.blocks[k] for k in range(576)] == [(y * 14, y * 14 + 14, x * 14, x * 14 + 14)
                                                    for y in range(24) for x in range(24)]
    # the canvas tokens in order: the kept window of cells row by row, a newline after each row
    (r0, r1), (c0, c1), _ = _kept_window((height, width), pipeline.images.anyres, 24)
    expected, token = {}, 576
    for y in range(r0, r1):
        for x in range(c0, c1):
            expected[token] = (y * 14, y * 14 + 14, x * 14, x * 14 + 14)
            token += 1
        assert token in newlines
        token += 1
    assert canvas.blocks == expected and token == explanation.n_image


def test_views_are_the_pixels_the_vision_tower_saw(pipeline):
    """The base view is the image squashed to 336x336 and the canvas the image resized to fit and
    pasted centred on black: built here straight from the image, not from the tiles. The input
    panel shows them as they are; the stage panels dim the canvas margin that unpadding cut away."""
    image = sample_image(width=640, height=480)
    explanation = explain(pipeline, image, PROMPT, max_new_tokens=1)
    settings = pipeline.images.anyres
    base = np.asarray(image.resize((336, 336), resample=settings.resample))
    pin_height, pin_width = best_resolution((480, 640), settings)
    assert (pin_height, pin_width) == (672, 672)
    canvas = Image.new("RGB", (672, 672), (0, 0, 0))
    canvas.paste(image.resize((672, 504), resample=settings.resample), (0, 84))
    for view, want in zip(explanation.views, (base, np.asarray(canvas))):
        assert view.picture.dtype == np.uint8
        assert np.abs(view.picture.astype(int) - want).max() <= 1  # the normalisation round trip
    # drawn: the base tile at full size above the canvas at half size
    panel = input_panel(explanation)
    assert panel.shape == (336 + PANEL_GAP + 336, 336, 3)
    assert np.array_equal(panel[:336], explanation.views[0].picture)
    assert np.array_equal(panel[336 + PANEL_GAP:], np.asarray(Image.fromarray(explanation.views[1].picture).reduce(2)))

    # rows 0..5 and 42..47 of the 48 x 48 cells were cut away; on a white canvas they must come out
    # dimmed grey in every stage panel and white in the input panel
    assert explanation.geometry["canvas_grid"] == {"rows": 48, "cols": 48, "r0": 6, "r1": 42, "c0": 0, "c1": 48}
    white = dataclasses.replace(explanation.views[1], picture=np.full((672, 672, 3), 255, dtype=np.uint8))
    bright = dataclasses.replace(explanation, views=[explanation.views[0], white])
    top = 336 + PANEL_GAP  # the canvas's first row in a panel
    margins = (slice(top, top + 42), slice(top + 294, top + 336))  # 84 canvas pixels each, halved
    for stage in explanation.stages:
        drawn = stage_panel(bright, stage)
        for rows in margins:
            assert np.all(drawn[rows] == round(255 * DIM))
        assert np.any(drawn[top + 42:top + 294] != round(255 * DIM))  # kept cells inside the window tinted
    for rows in margins:
        assert np.all(input_panel(bright)[rows] == 255)


def test_json_holds_the_geometry_and_every_stage(grey_runs, pipeline):
    explanation, generation = grey_runs[640, 480]
    data = explanation.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["n_image"] == generation.image_tokens[0] == 2340 and data["image_size"] == [480, 640]
    assert data["base_grid"] == [24, 24] and data["canvas_size"] == [672, 672]
    window = data["canvas_grid"]
    assert ((window["r0"], window["r1"]), (window["c0"], window["c1"]), 2) == _kept_window(
        (480, 640), pipeline.images.anyres, 24)
    assert "grid" not in data  # LLaVA-1.5's single grid
    stages = data["stages"]
    assert [s["tokens_before"] for s in stages] == generation.image_tokens[:-1]
    assert [len(s["scored"]) for s in stages] == [len(s["score"]) for s in stages] == generation.image_tokens[:-1]
    assert [len(s["ttv"]) for s in stages] == [len(s["iga"]) for s in stages] == generation.image_tokens[:-1]
    assert [len(s["kept"]) for s in stages] == [s["keep"] for s in stages] == generation.image_tokens[1:]
    assert [s["kept"] for s in stages] == generation.kept
    assert all(0 <= i < 2340 for s in stages for i in s["scored"])


def test_cli_writes_png_and_json_for_a_next_build(next_build, tmp_path, capsys):
    from transprune.cli.explain import main

    image = tmp_path / "picture.png"
    sample_image(width=640, height=480).save(image)
    out, report = tmp_path / "explain.png", tmp_path / "explain.json"
    assert main([str(next_build[0]), "--image", str(image), "--prompt", PROMPT, "--out", str(out),
                 "--json", str(report), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert "image tokens 2340 -> 2047 -> 1462 -> 292; wrote" in captured.err
    # four panels, each the 336-px base tile above the 672-px canvas drawn at 336
    assert Image.open(out).size == (8 + 4 * (336 + 8), 22 + 336 + 8 + 336 + 16)
    data = json.loads(report.read_text())
    assert [len(s["kept"]) for s in data["stages"]] == [2047, 1462, 292] and len(data["tokens"]) == 3
    assert data["png"] == str(out) and data["canvas_grid"]["r0"] == 6
    assert data["text"] + "\n" == captured.out
