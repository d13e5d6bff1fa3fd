"""The vision graph: pixels -> projected image features (CLIP up to the feature layer, CLS
dropped, the multi-modal projector). LLaVA-NeXT (anyres) builds take every tile of the batch plus
a pack index, and unpad and pack the tiles' features with a gather (``graphs.AnyresVisionGraph``).
"""

from __future__ import annotations

import numpy as np

from ..specs import GraphSpec, TensorSpec
from .base import EXAMPLE_SIZES, Case, GraphKind

# LLaVA-NeXT images (height, width) for validation cases: landscape, portrait, square, very wide
ANYRES_CASE_SIZES = ((300, 520), (640, 360), (500, 500), (120, 900))


def spec(facts) -> GraphSpec:
    side, d = facts.image_size, facts.hidden_size
    if not facts.anyres:
        return GraphSpec("vision", "vision", (TensorSpec("pixel_values", "float32", ("batch", 3, side, side)),),
                         (TensorSpec("image_features", "float", ("batch", facts.n_image, d)),))
    # every tile of every image of the batch in one stack; pack_index says, per image token, which
    # tile feature row (of the stack's [tiles * tile_tokens] rows) it is, -1 for the image_newline
    return GraphSpec("vision", "vision",
                     (TensorSpec("pixel_values", "float32", ("tiles", 3, side, side)),
                      TensorSpec("pack_index", "int64", ("batch", "image"))),
                     (TensorSpec("image_features", "float", ("batch", "image", d)),),
                     attrs={"anyres": True, "tile_tokens": facts.tile_tokens})


class Vision(GraphKind):
    name = "vision"

    def module(self, spec, weights, config):
        from .. import graphs

        vision = graphs.AnyresVisionGraph if spec.attrs.get("anyres") else graphs.VisionGraph
        return vision(weights, vision_config=config.vision_config.to_dict(), feature_layer=config.vision_feature_layer,
                      projector_act=config.projector_hidden_act)

    def example_inputs(self, spec, ex):
        if not spec.attrs.get("anyres"):
            return {}
        shape = ex.shape(spec.inputs[1])  # rows of the tiles' features, -1 for a newline
        rows = EXAMPLE_SIZES["tiles"] * spec.attrs["tile_tokens"]
        return {"pack_index": ex.torch.randint(-1, rows, shape, generator=ex.gen)}

    def validation_cases(self, graph, cases):
        if not cases.build.anyres:
            for batch in (1, 2, 3):
                pixels = cases.torch.randn(batch, 3, cases.image_size, cases.image_size, generator=cases.gen).numpy()
                yield Case(f"batch {batch}", {"pixel_values": pixels})
            return
        # real packing plans (unpadded grids, newlines) of images of several shapes, random tiles
        from transprune.runtime.anyres import num_tiles
        from transprune.runtime.inputs import ImageInputs, stack_plans

        images = ImageInputs(cases.build)
        for sizes in ANYRES_CASE_SIZES[:2], ANYRES_CASE_SIZES[2:3], ANYRES_CASE_SIZES[3:] * 2:
            per_image = [num_tiles(size, images.anyres) for size in sizes]
            tiles = sum(per_image)
            pixels = cases.torch.randn(tiles, 3, cases.image_size, cases.image_size, generator=cases.gen).numpy()
            plans = stack_plans([images.plan(size) for size in sizes], per_image, cases.build.tile_tokens)
            width = min(len(p) for p in plans)  # equal counts per batch: cut the longer plans
            yield Case(f"{len(sizes)} images, {tiles} tiles, {width} image tokens",
                       {"pixel_values": pixels, "pack_index": np.stack([p[:width] for p in plans])})

    def trt_axes(self, graph, phase, ctx):
        if not ctx.build.anyres:
            return {"batch": ctx.batch}
        from transprune.runtime.anyres import num_tiles
        from transprune.runtime.inputs import ImageInputs

        settings = ImageInputs(ctx.build).anyres
        tiles = ctx.range(1, ctx.batch.opt * num_tiles(ctx.opt_image_size, settings),
                          ctx.batch.max * settings.max_tiles)
        return {"batch": ctx.batch, "tiles": tiles, "image": ctx.alive[0]}

    def reference(self, graphs, name, t):
        return graphs.vision(name, t)

