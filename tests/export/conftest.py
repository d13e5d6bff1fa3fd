"""Manifests of models too big to export here (LLaVA-1.5-7B), written from the same graph specs the
exporter uses, for what reads only the manifest: TensorRT profiles, plans, memory estimates."""

from __future__ import annotations

import pytest


@pytest.fixture
def spec_build(tmp_path):
    """spec_build(preset name, schedule, dtype=, max_text_tokens=) -> a runtime ``Build`` whose
    manifest lists every graph with its real names, axes and attributes; graph byte counts are the
    preset's parameters (so memory estimates are those of the real model); no ONNX files."""
    from transprune.export.exporter import _concrete_dtypes, _limits
    from transprune.export.specs import ModelFacts, graph_specs
    from transprune.export.trt_targets import preset_parameters
    from transprune.presets import model_preset
    from transprune.runtime.build import Build

    def make(name: str, schedule, *, dtype: str = "fp16", max_text_tokens: int = 1024):
        preset = model_preset(name)
        text = preset.text
        facts = ModelFacts(hidden_size=text.hidden_size, num_layers=text.num_layers,
                           num_kv_heads=text.num_kv_heads, head_dim=text.head_dim, vocab_size=text.vocab_size,
                           image_size=preset.vision.image_size, n_image=preset.n_image_tokens, image_token_id=32000,
                           eos_token_id=2, pad_token_id=32001)
        specs = graph_specs(facts, schedule)
        width = {"fp32": 4, "fp16": 2}[dtype]
        graphs = []
        for spec in specs:
            entry = _concrete_dtypes(spec.to_dict(), {"fp32": "float32", "fp16": "float16"}[dtype])
            entry.update(file=f"{spec.name}.onnx", sha256={f"{spec.name}.onnx": f"{len(graphs):064x}"}, bytes=0,
                         trt_lint={"ok": True, "errors": [], "warnings": []})
            graphs.append(entry)
        graphs[0]["bytes"] = preset_parameters(preset) * width  # all weights on one graph: only the sum is read
        manifest = {"schema_version": 2, "model": {"id": name, "facts": facts.__dict__}, "dtype": dtype,
                    "schedule": schedule.to_dict(), "graphs": graphs,
                    "limits": _limits(max_text_tokens, n_image=facts.n_image,
                                      max_positions=text.max_position_embeddings)}
        directory = tmp_path / f"{name}-{schedule.name}"
        directory.mkdir(exist_ok=True)
        return Build.from_manifest(directory, manifest)

    return make
