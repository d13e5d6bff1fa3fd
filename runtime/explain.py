"""Which image patches survived pruning, and why: per-stage scores from the exported chain, drawn.

``explain`` runs one generation on any backend and keeps, for every prune stage, the image tokens
scored (as indices into the image's original tokens), their combined score, its normalised TTV and
IGA parts (from builds whose scorers output them) and the tokens kept. ``draw`` renders the
pictures the vision tower saw once per stage: the score as a heatmap over the patches still in
play, every patch pruned by then dimmed, titled with the token counts.

The pictures are "views", each with the pixel block of every image token that lies on it:

* LLaVA-1.5: one view, the image after the processor's resize and crop, one grid of patches;
* LLaVA-NeXT (anyres): two views, the base tile (the whole image squashed to one tile) and the
  high-res canvas the other tiles were cut from. Only the canvas cells the model kept after
  unpadding are tokens; the ``image_newline`` tokens after each of their rows have no pixels.

Pillow and numpy only, like the rest of the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from transprune.errors import TransPruneError

from .anyres import preprocess_anyres, tile_grid
from .image_loading import load_image
from .pipeline import Pipeline
from .preprocess import preprocess

PANEL_GAP = 8  # pixels between panels and around them, and between the views of one panel
TITLE_HEIGHT = 22
DIM = 0.25  # pruned patches turn grey at this fraction of their brightness
HEAT_ALPHA = 0.55  # how much of a scored patch's colour is the heatmap's
# LLaVA-NeXT's canvas (672x672 up to 336x1008) is drawn at half size, so a panel stays 336-504 px
# wide; its 14-px cells become whole 7-px blocks.
CANVAS_SHRINK = 2

# A perceptually ordered dark-to-bright ramp (black-purple-red-orange-yellow), so that a
# high score is bright and stays distinguishable from a dimmed (pruned) patch.
_RAMP = np.array([[40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
                  [252, 255, 164]], dtype=np.float64)

Block = tuple[int, int, int, int]  # (top, bottom, left, right) in pixels, bottom and right exclusive


@dataclass
class StageScores:
    after_layer: int
    tokens_before: int
    keep: int
    scored: list[int]  # original image-token indices scored at this stage, ascending
    score: list[float]  # combined score of each scored token
    ttv: list[float] | None  # its normalised TTV part (None: the schedule does not use TTV, or an older build)
    iga: list[float] | None  # its normalised IGA part
    kept: list[int]  # original indices kept, ascending

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class View:
    """One picture the vision tower saw, and where each image token's patch lies on it."""

    picture: np.ndarray  # [H, W, 3] uint8, the pixels with the processor's normalisation undone
    blocks: dict[int, Block]  # image-token index -> its patch; tokens on another view (or none) are absent
    shrink: int = 1  # drawn at 1/shrink of its size


@dataclass
class Explanation:
    views: list[View]  # LLaVA-1.5: the picture; LLaVA-NeXT: the base tile, then the high-res canvas
    grid: int  # patches per side of the picture (LLaVA-1.5) or of one tile (LLaVA-NeXT)
    n_image: int  # the image's tokens (LLaVA-NeXT: newlines included)
    image_size: tuple[int, int]  # (height, width) of the image as loaded
    geometry: dict  # how the tokens map to patches, as JSON: the grid, or NeXT's base grid and canvas window
    stages: list[StageScores]
    text: str
    tokens: list[int]

    @property
    def image(self) -> np.ndarray:
        """The whole image as the model saw it (LLaVA-NeXT: its base tile)."""
        return self.views[0].picture

    def to_dict(self) -> dict:
        return {**self.geometry, "image_size": list(self.image_size), "n_image": self.n_image, "text": self.text,
                "tokens": self.tokens, "stages": [s.to_dict() for s in self.stages]}


# --------------------------------------------------------------------------------------------
# Scores and views


def explain(pipeline: Pipeline, image, prompt: str, *, max_new_tokens: int = 16) -> Explanation:
    """Runs ``prompt`` about ``image`` through the pipeline's chain and collects every stage's scores."""
    build = pipeline.build
    if not build.anyres:
        grid = math.isqrt(build.n_image)
        if grid * grid != build.n_image:
            raise TransPruneError(f"{build.n_image} image tokens do not form a square grid; transprune-explain "
                                  f"draws a LLaVA-1.5 build's image as one square grid of patches")
    # loaded once, so that the views show exactly the (upright) image the generation saw
    loaded = load_image(image)
    generation = pipeline.generate(loaded, prompt, max_new_tokens=max_new_tokens)
    n_image = generation.image_tokens[0]
    if build.anyres:
        views, geometry = anyres_views(pipeline, loaded)
        grid = pipeline.images.patches_per_side
    else:
        views, geometry = [grid_view(model_view(pipeline, loaded), grid)], {"grid": [grid, grid]}
    scores = []
    for stage in pipeline.last_stages:
        pick = lambda part: None if part is None else [float(v) for v in part[0]]  # noqa: E731
        scores.append(StageScores(after_layer=stage.after_layer, tokens_before=int(stage.scored.shape[1]),
                                  keep=stage.keep, scored=stage.scored[0].tolist(), score=pick(stage.score),
                                  ttv=pick(stage.ttv), iga=pick(stage.iga), kept=stage.kept[0].tolist()))
    return Explanation(views=views, grid=grid, n_image=n_image, image_size=(loaded.height, loaded.width),
                       geometry=geometry, stages=scores, text=generation.text, tokens=generation.tokens)


def _unnormalise(pixels: np.ndarray, settings) -> np.ndarray:
    """Normalised float ``[..., 3, H, W]`` -> uint8 ``[..., H, W, 3]``: the processor's value steps undone.

    ``settings`` is either kind of preprocessing description; both carry mean, std and rescale_factor.
    """
    rgb = np.asarray(pixels).astype(np.float64)
    if settings.mean is not None:
        rgb = rgb * np.asarray(settings.std)[:, None, None] + np.asarray(settings.mean)[:, None, None]
    if settings.rescale_factor is not None:
        rgb = rgb / settings.rescale_factor
    return np.moveaxis(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), -3, -1)


def model_view(pipeline: Pipeline, image) -> np.ndarray:
    """LLaVA-1.5: the picture the vision tower sees, the processor's pixels with the normalisation undone."""
    settings = pipeline.images.settings
    return _unnormalise(preprocess([load_image(image)], settings)[0], settings)


def grid_view(picture: np.ndarray, grid: int) -> View:
    """``picture`` cut into ``grid`` x ``grid`` patches, token ``i`` the patch at row-major position ``i``."""
    height, width = picture.shape[0] // grid, picture.shape[1] // grid
    blocks = {}
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        blocks[index] = (row * height, (row + 1) * height, col * width, (col + 1) * width)
    return View(picture=picture, blocks=blocks)


def anyres_views(pipeline: Pipeline, image) -> tuple[list[View], dict]:
    """LLaVA-NeXT: ([base tile view, canvas view], geometry for the JSON) of one image.

    The tiles are the runtime's own (``preprocess_anyres``), so the views are the pixels the vision
    tower saw; the token -> patch mapping is read from the packing plan the chain was fed, so every
    drawn patch is the one whose feature sits at that token.
    """
    settings, per_side = pipeline.images.anyres, pipeline.images.patches_per_side
    tile = settings.tile_size
    pixels, size = preprocess_anyres(image, settings)
    tiles = _unnormalise(pixels, settings)  # [1 + rows * cols, tile, tile, 3]
    rows, cols = tile_grid(size, settings)
    # tiles 1.. were cut from the canvas row by row: put them back
    canvas = tiles[1:].reshape(rows, cols, tile, tile, 3).transpose(0, 2, 1, 3, 4)
    canvas = canvas.reshape(rows * tile, cols * tile, 3)
    plan = pipeline.images.plan(size)
    cell = tile // per_side
    base_blocks, canvas_blocks = _plan_blocks(plan, per_side, cell, cols)
    tops = [block[0] // cell for block in canvas_blocks.values()]
    lefts = [block[2] // cell for block in canvas_blocks.values()]
    geometry = {"base_grid": [per_side, per_side], "canvas_size": [rows * tile, cols * tile],
                # the canvas's cells and the window of them kept after unpadding ([r0, r1) x [c0, c1)),
                # read off the plan: its tokens are that window row by row, each row then one newline
                "canvas_grid": {"rows": rows * per_side, "cols": cols * per_side, "r0": min(tops),
                                "r1": max(tops) + 1, "c0": min(lefts), "c1": max(lefts) + 1}}
    views = [View(picture=tiles[0], blocks=base_blocks),
             View(picture=canvas, blocks=canvas_blocks, shrink=CANVAS_SHRINK)]
    return views, geometry


def _plan_blocks(plan: np.ndarray, per_side: int, cell: int, grid_cols: int) -> tuple[dict, dict]:
    """(base tile blocks, canvas blocks) of the tokens of one image's packing plan.

    Plan entry ``k`` is the tile-feature row of token ``k``: row ``v`` is cell ``v % per_tile`` (row-major)
    of tile ``v // per_tile``, tile 0 being the base tile and tiles 1.. the canvas's, row-major over
    its ``grid_cols`` columns of tiles; -1 is an ``image_newline``, which shows no pixels.
    """
    per_tile = per_side * per_side
    base, canvas = {}, {}
    for token, row in enumerate(plan.tolist()):
        if row < 0:
            continue
        tile, within = divmod(row, per_tile)
        y, x = divmod(within, per_side)
        if tile == 0:
            base[token] = (y * cell, (y + 1) * cell, x * cell, (x + 1) * cell)
            continue
        y += (tile - 1) // grid_cols * per_side
        x += (tile - 1) % grid_cols * per_side
        canvas[token] = (y * cell, (y + 1) * cell, x * cell, (x + 1) * cell)
    return base, canvas


# --------------------------------------------------------------------------------------------
# Drawing


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[N] scores -> [N, 3] RGB on the ramp, min-max scaled (all equal -> the middle colour)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    scaled = (values - values.min()) / span if span > 0 else np.full(values.shape, 0.5)
    position = scaled * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[:, None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def _tinted_view(view: View, colours: dict[int, np.ndarray]) -> np.ndarray:
    """``view`` with the patches of ``colours``' tokens tinted and every other pixel dimmed.

    "Every other pixel" is the pruned patches and, on NeXT's canvas, the padding the model never got.
    """
    image = view.picture.astype(np.float64)
    # grey and dark, so that no heat colour is mistaken for a pruned patch
    out = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2) * DIM
    for index, colour in colours.items():
        if index in view.blocks:
            top, bottom, left, right = view.blocks[index]
            block = (slice(top, bottom), slice(left, right))
            out[block] = image[block] * (1 - HEAT_ALPHA) + colour * HEAT_ALPHA
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def view_layout(explanation: Explanation) -> tuple[int, int, list[tuple[int, int]]]:
    """(panel width, panel height, (top, left) of each view in a panel): the views at their drawn
    size, stacked top to bottom (NeXT: base tile above canvas), centred, PANEL_GAP apart."""
    sizes = [(v.picture.shape[0] // v.shrink, v.picture.shape[1] // v.shrink) for v in explanation.views]
    width = max(w for _, w in sizes)
    places, top = [], 0
    for height, w in sizes:
        places.append((top, (width - w) // 2))
        top += height + PANEL_GAP
    return width, top - PANEL_GAP, places


def _compose(explanation: Explanation, pictures: list[np.ndarray]) -> np.ndarray:
    """One panel: each view's picture shrunk (box filter) and placed by ``view_layout``, on white."""
    width, height, places = view_layout(explanation)
    panel = np.full((height, width, 3), 255, dtype=np.uint8)
    for view, picture, (top, left) in zip(explanation.views, pictures, places):
        if view.shrink > 1:
            picture = np.asarray(Image.fromarray(picture).reduce(view.shrink))
        panel[top:top + picture.shape[0], left:left + picture.shape[1]] = picture
    return panel


def input_panel(explanation: Explanation) -> np.ndarray:
    """The views as the model saw them, untouched."""
    return _compose(explanation, [view.picture for view in explanation.views])


def stage_panel(explanation: Explanation, stage: StageScores) -> np.ndarray:
    """One stage drawn: scored patches tinted by their score, every other patch dimmed
    (pruned at this stage or before); kept patches are those left undimmed."""
    kept = set(stage.kept)
    # one colour scale over all the stage's tokens, so the views' colours compare
    colours = {index: colour for index, colour in zip(stage.scored, heat_colours(np.asarray(stage.score)))
               if index in kept}
    return _compose(explanation, [_tinted_view(view, colours) for view in explanation.views])


def panel_layout(explanation: Explanation) -> tuple[int, int, int]:
    """(panel count, image width, image height): the input plus one panel per stage, in a row."""
    panels = 1 + len(explanation.stages)
    width, height, _ = view_layout(explanation)
    return panels, PANEL_GAP + panels * (width + PANEL_GAP), TITLE_HEIGHT + height + 2 * PANEL_GAP


def draw(explanation: Explanation) -> Image.Image:
    """The input and every stage side by side, each titled with its token counts."""
    panels, width, height = panel_layout(explanation)
    panel_width = view_layout(explanation)[0]
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    pictures = [(input_panel(explanation), f"input: {explanation.n_image} image tokens")]
    for stage in explanation.stages:
        pictures.append((stage_panel(explanation, stage),
                         f"after layer {stage.after_layer}: {stage.tokens_before} -> {stage.keep}"))
    for number, (picture, title) in enumerate(pictures):
        left = PANEL_GAP + number * (panel_width + PANEL_GAP)
        pen.text((left, PANEL_GAP // 2 + 4), title, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(picture), (left, TITLE_HEIGHT + PANEL_GAP))
    return canvas
