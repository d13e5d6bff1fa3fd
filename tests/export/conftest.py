"""Manifests of models too big to export here (LLaVA-1.5-7B), written from the same graph specs the
exporter uses, for what reads only the manifest: TensorRT profiles, plans, memory estimates."""

from __future__ import annotations

import pytest

from ..conftest import TINY_INT4_BLOCK


@pytest.fixture
def spec_build(tmp_path):
    """spec_build(preset name, schedule, dtype=, max_text_tokens=, weights=) -> a runtime ``Build``
    whose manifest lists every graph with its real names, axes and attributes; graph byte counts are
    the preset's parameters (so memory estimates are those of the real model; ``weights="int4"``:
    as ``--weights int4`` stores them); no ONNX files."""
    from transprune.export.exporter import _concrete_dtypes, _limits
    from transprune.export.kinds import graph_specs
    from transprune.family import ModelFacts
    from transprune.export.tensorrt.memory import preset_parameters
    from transprune.presets import NEXT_GRID_PINPOINTS, model_preset
    from transprune.runtime.build import Build
    from transprune.runtime.manifest import SCHEMA_VERSION

    def make(name: str, schedule, *, dtype: str = "fp16", max_text_tokens: int = 1024, weights: str = "float"):
        preset = model_preset(name)
        text = preset.text
        anyres = preset.family.anyres
        tile_tokens = preset.vision.n_patches
        facts = ModelFacts(hidden_size=text.hidden_size, num_layers=text.num_layers,
                           num_kv_heads=text.num_kv_heads, head_dim=text.head_dim, vocab_size=text.vocab_size,
                           image_size=preset.vision.image_size, n_image=None if anyres else tile_tokens,
                           image_token_id=32000, eos_token_id=2, pad_token_id=32001, anyres=anyres,
                           tile_tokens=tile_tokens if anyres else None)
        specs = graph_specs(facts, schedule)
        width = {"fp32": 4, "fp16": 2}[dtype]
        graphs = []
        for spec in specs:
            entry = _concrete_dtypes(spec.to_dict(), {"fp32": "float32", "fp16": "float16"}[dtype])
            entry.update(file=f"{spec.name}.onnx", sha256={f"{spec.name}.onnx": f"{len(graphs):064x}"}, bytes=0,
                         trt_lint={"ok": True, "errors": [], "warnings": []})
            graphs.append(entry)
        graphs[0]["bytes"] = preset_parameters(preset) * width  # all weights on one graph: only the sum is read
        weights_section = None
        if weights == "int4":  # --weights int4 with its defaults: decoder and lm_head in blocks of 128
            from transprune.export.int4 import Int4Weights
            from transprune.export.tensorrt.memory import int4_weight_bytes

            weights_section = Int4Weights().to_dict()
            graphs[0]["bytes"] = int4_weight_bytes(preset, float_bytes=width)
        image_tokens, image_preprocess = {"min": tile_tokens, "max": tile_tokens}, None
        if anyres:  # LLaVA-NeXT's processor: 336 px tiles on its grid pinpoints, CLIP's normalisation
            from transprune.runtime.anyres import AnyresPreprocess, image_feature_count

            settings = AnyresPreprocess(grid_pinpoints=[list(p) for p in NEXT_GRID_PINPOINTS], tile_size=336,
                                        base_image="resize_to_tile", resample=3, rescale_factor=1 / 255,
                                        mean=[0.48145466, 0.4578275, 0.40821073],
                                        std=[0.26862954, 0.26130258, 0.27577711], pad_colour=[0, 0, 0])
            image_preprocess = settings.to_dict()
            image_tokens["max"] = max(image_feature_count(tuple(p), settings) for p in NEXT_GRID_PINPOINTS)
        manifest = {"schema_version": SCHEMA_VERSION, "model": {"id": name, "facts": facts.__dict__}, "dtype": dtype,
                    "schedule": schedule.to_dict(), "graphs": graphs, "image_preprocess": image_preprocess,
                    "limits": _limits(max_text_tokens, image_tokens=image_tokens,
                                      max_positions=text.max_position_embeddings)}
        if weights_section is not None:
            manifest["weights"] = weights_section
        directory = tmp_path / f"{name}-{schedule.name}"
        directory.mkdir(exist_ok=True)
        return Build.from_manifest(directory, manifest)

    return make




@pytest.fixture(scope="session")
def int4_tiny_build(tmp_path_factory, tiny_checkpoint, int4_build):
    """``int4_tiny_build(dtype)`` -> (build directory, manifest) of tiny, paper schedule, exported with
    ``--weights int4`` (blocks of ``TINY_INT4_BLOCK``): fp32 is the validated ``int4_build``; fp16 is
    exported once per session without validation (the TensorRT side cares about the graphs)."""
    import json

    from transprune.export.exporter import export_model
    from transprune.schedule import preset

    root = tmp_path_factory.mktemp("int4")

    def build(dtype: str = "fp16"):
        if dtype == "fp32":
            return int4_build
        out = root / f"tiny-paper-int4-{dtype}"
        if not out.exists():
            export_model(model=str(tiny_checkpoint), out=out, schedule=preset("paper"), dtype=dtype,
                         weight_format="int4", block_size=TINY_INT4_BLOCK, validate=False)
        return out, json.loads((out / "manifest.json").read_text())

    return build
