"""The benchmarks' one door into :mod:`transprune.export` and :mod:`transprune.runtime`.

Every use of those two packages by :mod:`transprune.bench` goes through here, so that when their
modules move only this file changes. Each import is made inside the function that needs it: the
exporter pulls in torch, and the peak-RSS probe of a runtime build must stay torch-free to measure
what the runtime alone costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def manifest_schema_version() -> int:
    """The manifest schema this transprune writes."""
    from transprune.runtime.manifest import SCHEMA_VERSION

    return SCHEMA_VERSION


def graph_signatures(facts: dict, schedule) -> list[tuple[str, list[str], list[str]]]:
    """(name, input names, output names) of every graph today's exporter writes for a model with
    these facts (a manifest's ``model.facts``) and this schedule."""
    from transprune.export.kinds import graph_specs
    from transprune.family import ModelFacts

    return [(g.name, [t.name for t in g.inputs], [t.name for t in g.outputs])
            for g in graph_specs(ModelFacts(**facts), schedule)]


def export_build(*, model: str, out: Path, schedule, dtype: str, weight_format: str = "float",
                 block_size: int | None = None, progress: Callable[[int, int, str], None]) -> None:
    """Exports ``model`` with ``schedule`` into ``out`` in ``dtype`` with ``weight_format`` weights
    ("float" or "int4" in blocks of ``block_size``), without validation, replacing whatever is there."""
    from transprune.export.exporter import export_model

    export_model(model=model, out=out, schedule=schedule, dtype=dtype, weight_format=weight_format,
                 block_size=block_size, validate=False, force=out.exists(), progress=progress)


def int4_block_size(checkpoint: Path) -> int:
    """The block size an int4 export of ``checkpoint`` gets by default here: the exporter's default
    (128) where it divides the input channels of every weight int4 quantizes, else the largest
    supported block that does (``bench``'s MLP, 2752 wide, takes 64 at most)."""
    from transprune.export.int4 import BLOCK_SIZES, DEFAULT_BLOCK_SIZE, Int4Weights
    from transprune.export.weights import CheckpointWeights

    weights = CheckpointWeights(checkpoint)
    scheme = Int4Weights()
    widths = {weights.describe(name)[0][1] for name in weights.names()
              if scheme.quantizes(name) and len(weights.describe(name)[0]) == 2}
    fits = [b for b in BLOCK_SIZES if b <= DEFAULT_BLOCK_SIZE and all(w % b == 0 for w in widths)]
    return max(fits, default=min(BLOCK_SIZES))


def convert_to_matmulnbits(src: Path, out: Path, *, accuracy_level: int) -> dict:
    """Copies the int4 build in ``src`` to ``out`` with its DequantizeLinear + MatMul pairs as
    onnxruntime's MatMulNBits (same quantized values); returns the new manifest."""
    from transprune.export.int4_matmulnbits import to_matmulnbits

    return to_matmulnbits(src, out, accuracy_level=accuracy_level, force=True)


def open_pipeline(path: Path, *, threads: int, verify: bool = True, int4_accuracy_level: int | None = None):
    """The torch-free runtime on the build in ``path``, onnxruntime backend (``int4_accuracy_level``:
    how onnxruntime computes the int4 MatMuls it fuses; None: its default)."""
    from transprune.runtime.pipeline import Pipeline

    options = {} if int4_accuracy_level is None else {"int4_accuracy_level": int4_accuracy_level}
    return Pipeline.from_dir(path, backend="onnxruntime", verify=verify, threads=threads, **options)


def import_runtime() -> None:
    """Imports the runtime and onnxruntime now, so that a probe timing a load does not count them."""
    import onnxruntime  # noqa: F401

    from transprune.runtime import pipeline  # noqa: F401


def greedy_chain(pipeline, image, prompt: str, new_tokens: int) -> dict:
    """One greedy generation of exactly ``new_tokens`` tokens (EOS ignored) by ``pipeline``'s chain,
    kept for comparing builds: {"tokens", "first_logits" (float32 [V]), "kept" (per stage, indices
    into the original image tokens)}."""
    import numpy as np

    from transprune.runtime.chain import Chain

    prepared = pipeline.images.prepare([image])
    encoded = pipeline.prompts.encode_batch([prompt], image_tokens=prepared.image_tokens)
    with pipeline.backend.exclusive():
        out = Chain(pipeline.build, pipeline.backend).generate(
            encoded.input_ids, encoded.attention_mask, prepared.pixel_values, max_new_tokens=new_tokens,
            eos_token_id=None, pack_index=prepared.pack_index)
    return {"tokens": list(out.tokens[0]), "first_logits": np.asarray(out.step_logits[0][0], dtype=np.float32),
            "kept": [np.asarray(stage.kept[0]) for stage in out.stages]}


def int4_tools():
    """What the int4 measurements use from the exporter: the scheme, the reference quantizer, the
    validation's agreement measure, prompt and token count, and checkpoint-name canonicalisation."""
    from types import SimpleNamespace

    from transprune.export.int4 import Int4Weights, quantize_reference
    from transprune.export.validate import VALIDATION_PROMPT, VALIDATION_TOKENS, agreement
    from transprune.export.weights import canonical_name

    return SimpleNamespace(Int4Weights=Int4Weights, quantize_reference=quantize_reference, agreement=agreement,
                           prompt=VALIDATION_PROMPT, tokens=VALIDATION_TOKENS, canonical_name=canonical_name)
