"""Which image patches survived pruning, and why: per-stage scores from the exported chain, drawn.

``explain`` runs one generation on any backend and keeps, for every prune stage, the image tokens
scored (as indices into the original grid), their combined score, its normalised TTV and IGA
parts (from builds whose scorers output them) and the tokens kept. ``draw`` renders the image as
the model saw it (after the processor's resize and crop) once per stage: the score as a heatmap
over the patches still in play, every patch pruned by then dimmed, titled with the token counts.
Pillow and numpy only, like the rest of the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from transprune.errors import TransPruneError

from .pipeline import Pipeline
from .preprocess import load_image, preprocess

PANEL_GAP = 8  # pixels between panels and around them
TITLE_HEIGHT = 22
DIM = 0.25  # pruned patches turn grey at this fraction of their brightness
HEAT_ALPHA = 0.55  # how much of a scored patch's colour is the heatmap's

# A perceptually ordered dark-to-bright ramp (black-purple-red-orange-yellow), so that a
# high score is bright and stays distinguishable from a dimmed (pruned) patch.
_RAMP = np.array([[40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
                  [252, 255, 164]], dtype=np.float64)


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
class Explanation:
    image: np.ndarray  # [H, W, 3] uint8, the picture as the model saw it
    grid: int  # patches per side
    n_image: int
    stages: list[StageScores]
    text: str
    tokens: list[int]

    def to_dict(self) -> dict:
        return {"grid": [self.grid, self.grid], "n_image": self.n_image, "text": self.text, "tokens": self.tokens,
                "stages": [s.to_dict() for s in self.stages]}


def explain(pipeline: Pipeline, image, prompt: str, *, max_new_tokens: int = 16) -> Explanation:
    """Runs ``prompt`` about ``image`` through the pipeline's chain and collects every stage's scores."""
    build = pipeline.build
    if build.anyres:
        raise TransPruneError("transprune-explain draws LLaVA-1.5 builds (one grid of patches); drawing LLaVA-NeXT's "
                              "tiles is not supported yet")
    grid = math.isqrt(build.n_image)
    if grid * grid != build.n_image:
        raise TransPruneError(f"{build.n_image} image tokens do not form a square grid; transprune-explain draws "
                              f"single-grid LLaVA-1.5 builds only")
    generation = pipeline.generate(image, prompt, max_new_tokens=max_new_tokens)
    stages = pipeline.last_stages
    scores = []
    for stage in stages:
        pick = lambda part: None if part is None else [float(v) for v in part[0]]  # noqa: E731
        scores.append(StageScores(after_layer=stage.after_layer, tokens_before=int(stage.scored.shape[1]),
                                  keep=stage.keep, scored=stage.scored[0].tolist(), score=pick(stage.score),
                                  ttv=pick(stage.ttv), iga=pick(stage.iga), kept=stage.kept[0].tolist()))
    return Explanation(image=model_view(pipeline, image), grid=grid, n_image=build.n_image, stages=scores,
                       text=generation.text, tokens=generation.tokens)


def model_view(pipeline: Pipeline, image) -> np.ndarray:
    """The picture the vision tower sees: the processor's pixels with the normalisation undone."""
    settings = pipeline.images.settings
    rgb = preprocess([load_image(image)], settings)[0].astype(np.float64)  # [3, H, W], normalised
    if settings.mean is not None:
        rgb = rgb * np.asarray(settings.std)[:, None, None] + np.asarray(settings.mean)[:, None, None]
    if settings.rescale_factor is not None:
        rgb = rgb / settings.rescale_factor
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[N] scores -> [N, 3] RGB on the ramp, min-max scaled (all equal -> the middle colour)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    scaled = (values - values.min()) / span if span > 0 else np.full(values.shape, 0.5)
    position = scaled * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[:, None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def stage_panel(explanation: Explanation, stage: StageScores) -> np.ndarray:
    """One stage drawn: scored patches tinted by their score, every other patch dimmed
    (pruned at this stage or before); kept patches are those left undimmed."""
    image = explanation.image.astype(np.float64)
    size, grid = image.shape[0], explanation.grid
    patch = size // grid
    kept = set(stage.kept)
    # pruned patches: grey and dark, so that no heat colour is mistaken for one
    out = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2) * DIM
    for index, colour in zip(stage.scored, heat_colours(np.asarray(stage.score))):
        if index not in kept:
            continue
        row, col = divmod(index, grid)
        block = (slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch))
        out[block] = image[block] * (1 - HEAT_ALPHA) + colour * HEAT_ALPHA
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def panel_layout(explanation: Explanation) -> tuple[int, int, int]:
    """(panel count, image width, image height): the input plus one panel per stage, in a row."""
    panels = 1 + len(explanation.stages)
    size = explanation.image.shape[0]
    return panels, PANEL_GAP + panels * (size + PANEL_GAP), TITLE_HEIGHT + size + 2 * PANEL_GAP


def draw(explanation: Explanation) -> Image.Image:
    """The input and every stage side by side, each titled with its token counts."""
    panels, width, height = panel_layout(explanation)
    size = explanation.image.shape[0]
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    pictures = [(explanation.image, f"input: {explanation.n_image} image tokens")]
    for stage in explanation.stages:
        pictures.append((stage_panel(explanation, stage),
                         f"after layer {stage.after_layer}: {stage.tokens_before} -> {stage.keep}"))
    for number, (picture, title) in enumerate(pictures):
        left = PANEL_GAP + number * (size + PANEL_GAP)
        pen.text((left, PANEL_GAP // 2 + 4), title, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(picture), (left, TITLE_HEIGHT + PANEL_GAP))
    return canvas
