"""Chain parity for the other schedules and for fp16 (paper: test_export_chain, iga-only: the CLI
test). Each export takes about a minute on tiny, so each schedule is exported exactly once per
session (``schedule_build`` in tests/conftest.py, shared with the TensorRT-RTX engine builds)."""

import numpy as np
import onnx
import pytest


@pytest.fixture
def builds(schedule_build):
    return schedule_build


def test_ttv_only_chain_matches_the_reference(builds):
    _, manifest = builds("ttv-only")
    chain = manifest["validation"]["chain"]
    assert chain["exact"] and chain["tokens"] == chain["reference_tokens"] and chain["kept_overlap"] == [1.0] * 3
    scorers = [g for g in manifest["graphs"] if g["kind"] == "scorer"]
    assert [g["attrs"]["uses_iga"] for g in scorers] == [False] * 3
    # without IGA a scorer holds no weights at all
    assert all(g["bytes"] < 100_000 for g in scorers)
    # with one criterion the score is its own (normalised) part: no separate part outputs, and
    # explanations read the TTV part from the score
    assert all({"ttv_score", "iga_score"}.isdisjoint(o["name"] for o in g["outputs"]) for g in scorers)
    from transprune.runtime.explain import explain
    from transprune.runtime.pipeline import Pipeline
    from transprune.sample_image import sample_image

    with Pipeline.from_dir(builds("ttv-only")[0]) as pipeline:
        stages = explain(pipeline, sample_image(), "What is it?", max_new_tokens=1).stages
    assert all(s.ttv == s.score and s.iga is None for s in stages)
    assert all(abs(sum(s.ttv) - 1) < 1e-4 for s in stages)


def test_schedule_none_equals_unpruned_transformers(builds, tiny_model):
    """No scorers, one segment of every layer: the chain is plain LLaVA, token for token."""
    import torch

    from transprune.reference import encode_inputs
    from transprune.runtime.backend import open_backend
    from transprune.runtime.build import Build
    from transprune.runtime.chain import Chain
    from transprune.sample_image import sample_images

    out, manifest = builds("none")
    assert [g["kind"] for g in manifest["graphs"]] == ["vision", "embed", "prefill_inputs", "segment", "head"]
    images = sample_images()[:2]
    inputs = encode_inputs(tiny_model.processor, images, ["Describe the picture.", "What colour is the big shape?"])
    with torch.no_grad():
        hf = tiny_model.model.generate(**inputs, max_new_tokens=12, do_sample=False, output_scores=True,
                                       return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    build = Build.open(out)
    chain = Chain(build, open_backend("onnxruntime", build))
    ours = chain.generate(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(),
                          inputs["pixel_values"].numpy(), max_new_tokens=12)
    prompt = inputs["input_ids"].shape[1]
    assert ours.tokens == hf.sequences[:, prompt:].tolist()
    for mine, theirs in zip(ours.step_logits, hf.scores):
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-4, rtol=0)


def test_fp16_build_has_half_weights_and_agrees_with_the_fp32_reference(builds, paper_build):
    out, manifest = builds("paper", dtype="fp16")
    assert manifest["dtype"] == "fp16"
    validation = manifest["validation"]
    assert validation["tolerance"] == 3e-2 and not validation["chain"]["exact"]
    # every graph passed its fp16 tolerance at three sizes, segments at four (validation raises otherwise) ...
    assert all(len(r["cases"]) == (4 if name.startswith("segment") else 3) for name, r in validation["graphs"].items())
    # ... and the chain still keeps (nearly) the same image tokens as the fp32 reference
    assert min(validation["chain"]["kept_overlap"]) >= 0.9
    def largest_weight(build):
        model = onnx.load(build / "segment_0.onnx")
        return max(model.graph.initializer, key=lambda t: len(t.raw_data))

    half, full = largest_weight(out), largest_weight(paper_build[0])
    assert half.data_type == onnx.TensorProto.FLOAT16 and full.data_type == onnx.TensorProto.FLOAT
    assert half.dims == full.dims and len(half.raw_data) * 2 == len(full.raw_data)
