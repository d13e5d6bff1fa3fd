"""Which weights an int4 build should quantize, decided by measurement: size against accuracy.

For each choice of parts (export/int4.py ``PARTS``) the PyTorch reference model's weights are
replaced by their int4 values dequantized, exactly what an int4 build computes (validation checks
that equality graph by graph), and its 16-token greedy generation on the sample image is compared
with the float model's: tokens identical, first token identical, kept-index overlap per pruning
stage, largest logit error over the steps run on the same tokens. The bytes are the model's
weights as an int4 build stores them (int4 values plus one scale per block, the rest in the
export dtype). No export is needed, so every choice is measured on the same model in one run.

Random weights (the synthetic presets) quantize worse than trained ones, whose weights are far
from Gaussian and whose logits are far from flat; what a comparison here says is which parts add
how much error relative to the others, not what a real checkpoint loses.
"""

from __future__ import annotations

import copy

from .export_and_runtime import int4_tools
from .output import log

# each part alone (the error it adds by itself), then the cumulative choices a build can make
CHOICES = (("lm_head",), ("projector",), ("vision",), ("decoder",), ("decoder", "lm_head"),
           ("decoder", "lm_head", "projector"), ("decoder", "lm_head", "projector", "vision"))


def weight_bytes(model, scheme, dtype_bytes: int) -> int:
    """What the model's weights take in a build: int4 + scales where ``scheme`` quantizes (None:
    nothing), the export dtype elsewhere."""
    tools, total = int4_tools(), 0
    for name, parameter in model.named_parameters():
        canonical = tools.canonical_name(name)
        count = parameter.numel()
        if scheme is not None and canonical is not None and parameter.dim() == 2 and scheme.quantizes(canonical):
            total += count // 2 + count * dtype_bytes // scheme.block_size
        else:
            total += count * dtype_bytes
    return total


def measure(*, model: str, block_size: int, schedule, dtype_bytes: int = 2, choices=CHOICES) -> dict:
    """{"float": bytes, "choices": [{parts, bytes, agreement...}]} for ``model`` (a preset or a
    checkpoint directory)."""
    import numpy as np

    from transprune.checkpoints import load_llava
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.sample_image import sample_image

    tools = int4_tools()
    loaded = load_llava(model)
    encoded = encode_inputs(loaded.processor, [sample_image()], [tools.prompt])

    def generate(llava):
        return TransPruneReference(llava, schedule).generate(
            encoded["input_ids"], encoded["attention_mask"], encoded["pixel_values"],
            max_new_tokens=tools.tokens, image_sizes=encoded.get("image_sizes"))

    log(f"int4 parts: float reference on {model}")
    baseline = generate(loaded.model)
    results = {"model": model, "block_size": block_size, "dtype_bytes": dtype_bytes,
               "float_bytes": weight_bytes(loaded.model, None, dtype_bytes), "choices": []}
    for parts in choices:
        log(f"int4 parts: {'+'.join(parts)}")
        scheme = tools.Int4Weights(block_size, parts)
        quantized = copy.deepcopy(loaded.model)
        tools.quantize_reference(quantized, scheme, np.float32)
        results["choices"].append({"parts": list(parts), "bytes": weight_bytes(quantized, scheme, dtype_bytes),
                                   **tools.agreement(generate(quantized), baseline)})
        del quantized
    return results


def markdown(results: dict) -> str:
    gib = 1 << 30
    lines = ["| int4 parts | weights | vs float | tokens = float (of 16) | first token | kept overlap per stage "
             "| max logit error |", "|---|---|---|---|---|---|---|",
             f"| none (float) | {results['float_bytes'] / gib:.2f} GiB | 1.00x | 16 | yes | 100% | 0 |"]
    for row in results["choices"]:
        overlap = " / ".join(f"{o:.0%}" for o in row["kept_overlap"])
        lines.append(f"| {'+'.join(row['parts'])} | {row['bytes'] / gib:.2f} GiB | "
                     f"{row['bytes'] / results['float_bytes']:.2f}x | {row['tokens_identical']} | "
                     f"{'yes' if row['first_token_identical'] else 'no'} | {overlap} | {row['max_logit_error']:.3g} |")
    return "\n".join(lines)
