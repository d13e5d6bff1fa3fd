"""Exporting LLaVA-NeXT (tiny-next): dynamic tiles and image tokens, keep ratios, validation on
several aspect ratios, and what the manifest tells hosts and TensorRT about the ranges."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def _graph(manifest, name):
    return next(g for g in manifest["graphs"] if g["name"] == name)


def test_manifest_describes_the_image_token_range(next_build):
    _, manifest = next_build
    facts = manifest["model"]["facts"]
    assert manifest["schema_version"] == 5
    assert facts["anyres"] is True and facts["n_image"] is None and facts["tile_tokens"] == 576
    # one base tile alone .. the 2 x 2 pinpoint filled: 576 + 48 rows x (48 cells + a newline)
    assert manifest["limits"]["image_tokens"] == {"min": 576, "max": 576 + 48 * 49}
    assert manifest["limits"]["max_prompt_tokens"] == 1024 + 2928
    assert manifest["keep_counts"] == {"min": [504, 360, 72], "max": [2562, 1830, 366]}
    vision = _graph(manifest, "vision")
    assert [(t["name"], t["axes"]) for t in vision["inputs"]] == [
        ("pixel_values", ["tiles", 3, 336, 336]), ("pack_index", ["batch", "image"])]
    assert vision["outputs"][0]["axes"] == ["batch", "image", 64]
    assert _graph(manifest, "prefill_inputs")["inputs"][3]["axes"] == ["batch", "image", 64]
    for index, ratio in enumerate((0.875, 0.625, 0.125)):
        attrs = _graph(manifest, f"scorer_{index}")["attrs"]
        assert attrs["keep"] is None and attrs["keep_ratio"] == ratio
    assert [_graph(manifest, f"segment_{i}")["attrs"]["position_shift"] for i in range(4)] == [0, None, None, None]
    preprocess = manifest["image_preprocess"]
    assert preprocess["grid_pinpoints"] == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert preprocess["tile_size"] == 336


def test_validation_ran_the_chain_on_three_aspect_ratios(next_build):
    """Every graph within tolerance, and the chain identical to the reference (kept indices and 16
    greedy tokens) for a wide, a tall and a square image, each with its own token count."""
    _, manifest = next_build
    validation = manifest["validation"]
    assert set(validation["graphs"]) == {g["name"] for g in manifest["graphs"]}
    assert len(validation["graphs"]["vision"]["cases"]) == 3
    images = validation["chain"]["images"]
    assert [image["image_size"] for image in images] == [[224, 448], [600, 240], [400, 400]]
    counts = [image["image_tokens"] for image in images]
    assert len({c[0] for c in counts}) == 3
    for n, *keep in counts:
        assert keep == [int(n * 0.875), int(n * 0.625), int(n * 0.125)]
    for image in images:
        assert image["exact"] and image["tokens"] == image["reference_tokens"] and image["tokens_identical"] == 16
        assert image["kept_overlap"] == [1.0, 1.0, 1.0]


def test_vision_graph_packs_like_transformers(next_build, tiny_next_model):
    """The exported vision graph on the runtime's tiles and pack index gives exactly the image
    features transformers' LlavaNext computes (unpadding, newlines) for an odd-sized image."""
    import torch

    from transprune.reference import TransPruneReference
    from transprune.runtime.build import Build
    from transprune.runtime.inputs import ImageInputs
    from transprune.runtime.ort_backend import OrtBackend
    from transprune.sample_image import sample_image
    from transprune.schedule import preset

    build = Build.open(next_build[0])
    image = sample_image(width=517, height=283)
    prepared = ImageInputs(build).prepare([image])
    feeds = {"pixel_values": prepared.pixel_values, "pack_index": prepared.pack_index}
    ours = OrtBackend(build).run("vision", feeds)["image_features"]
    encoded = tiny_next_model.processor(images=[image], text=["<image>"], return_tensors="pt")
    with torch.no_grad():
        theirs = TransPruneReference(tiny_next_model.model, preset("none")).image_features(
            encoded["pixel_values"], encoded["image_sizes"]).numpy()
    assert ours.shape == theirs.shape == (1, prepared.image_tokens[0], 64)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_trt_plan_covers_the_image_range(next_build, tmp_path):
    """The TensorRT plan of a real anyres build: tiles 1..5, image tokens 576..2928, scorer K over
    int(n * ratio) -- all below TopK's 3840."""
    from transprune.export.tensorrt.plan import make_plan
    from transprune.export.tensorrt.profiles import shape_limits
    from transprune.export.tensorrt.targets import TARGETS
    from transprune.runtime.build import Build

    build = Build.open(next_build[0])
    plan = make_plan(build, target=TARGETS["jetson-agx-orin"], precision="fp16",
                     limits=shape_limits(build, max_text_tokens=64, max_new_tokens=32), engine_dir=tmp_path)
    engines = {engine["graph"]: engine for engine in plan["engines"]}
    vision = engines["vision"]["profiles"][0]["inputs"]
    assert (vision["pixel_values"]["min"][0], vision["pixel_values"]["max"][0]) == (1, 5)
    assert (vision["pack_index"]["min"], vision["pack_index"]["max"]) == ([1, 576], [1, 2928])
    keep = engines["scorer_0"]["profiles"][0]["inputs"]["keep"]
    assert keep["value"] and (keep["min"], keep["max"]) == ([504], [2562])
