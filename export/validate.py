"""Validation of a freshly exported build against the PyTorch reference (fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

VALIDATION_PROMPT = "What is shown in this picture? Describe it."
VALIDATION_TOKENS = 16


class ValidationError(TransPruneError):
    """The exported chain disagrees with the reference."""


def validate_chain(build_dir: Path, manifest: dict, *, checkpoint: Path, schedule) -> dict:
    """Runs the whole chain with onnxruntime on a sample image + prompt next to the reference:
    kept indices identical at every stage and 16 greedy tokens identical."""
    import torch

    from transprune.checkpoints import load_llava
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.runtime.chain import Chain
    from transprune.runtime.ort_runner import OrtGraphs
    from transprune.sample_image import sample_image

    loaded = load_llava(str(checkpoint))
    inputs = encode_inputs(loaded.processor, [sample_image()], [VALIDATION_PROMPT])
    reference = TransPruneReference(loaded.model, schedule).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], max_new_tokens=VALIDATION_TOKENS)
    graphs = OrtGraphs(build_dir, manifest["graphs"])
    chain = Chain(manifest["graphs"], graphs.run, n_image=manifest["model"]["facts"]["n_image"])
    ours = chain.generate(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(),
                          inputs["pixel_values"].numpy(), max_new_tokens=VALIDATION_TOKENS)
    for stage, (mine, theirs) in enumerate(zip(ours.stages, reference.records)):
        if not np.array_equal(mine.kept, theirs.kept.numpy()):
            differ = int((mine.kept != theirs.kept.numpy()).sum())
            raise ValidationError(f"stage {stage} (after layer {mine.after_layer}): {differ} kept indices differ "
                                  f"from the reference")
    if ours.tokens != reference.tokens:
        raise ValidationError(f"generated tokens differ from the reference: {ours.tokens} vs {reference.tokens}")
    logit_error = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ours.step_logits, reference.step_logits))
    return {"tokens": ours.tokens[0], "stages_identical": len(ours.stages), "max_logit_error": logit_error,
            "prompt": VALIDATION_PROMPT}
