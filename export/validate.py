"""Validation of a freshly exported build against the PyTorch reference.

Two levels, both on by default:

* every graph on its own, at three sizes or more (prompt lengths, past lengths, batch sizes), against the
  same computation done by transformers' modules in ``transprune.reference``: a mismatch names
  the graph, the output, the case and the error, so a broken export points at one graph;
* the whole chain on a sample image + prompt: kept indices identical at every stage and 16 greedy
  tokens identical (fp32 builds; an fp16 build reports agreement instead of requiring identity,
  since half precision legitimately flips near-ties).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

VALIDATION_PROMPT = "What is shown in this picture? Describe it."
VALIDATION_TOKENS = 16
# max |onnx - reference| allowed, relative to the largest |reference| value of that output
TOLERANCE = {"fp32": 5e-4, "fp16": 3e-2}
# TTV is 1 - cosine of nearly parallel vectors (plus a norm ratio): from half-precision hidden
# states it keeps only a few significant bits, so fp16 builds check it loosely; what matters for
# them is the kept-token overlap, which is checked separately.
TTV_TOLERANCE_FP16 = 0.2
# LLaVA-NeXT chain checks: the sample image resized to (width, height) of different aspect ratios
ANYRES_CHAIN_SIZES = ((448, 224), (240, 600), (400, 400))


class ValidationError(TransPruneError):
    """The exported build disagrees with the reference."""


class GraphMismatch(ValidationError):
    def __init__(self, graph: str, output: str, case: str, error: float, tolerance: float) -> None:
        self.graph, self.output, self.case, self.error, self.tolerance = graph, output, case, error, tolerance
        super().__init__(f"graph {graph!r}, output {output!r} ({case}): max error {error:.3g} against the PyTorch "
                         f"reference exceeds {tolerance:.3g}; the export of this graph is wrong")


def validate_graphs(manifest: dict, *, build, loaded, schedule, run) -> dict:
    """Checks every graph at three sizes or more; returns {graph: {"cases": [...], "max_error": {output: e}}}.

    Each graph's cases and reference computation come from its kind in the registry
    (``export/kinds``)."""
    from transprune.graph_reference import ReferenceGraphs
    from transprune.reference import TransPruneReference

    from .kinds import kind_of
    from .kinds.base import CaseMaker
    from .kinds.vision import ANYRES_CASE_SIZES

    dtype = manifest["dtype"]
    reference = ReferenceGraphs(TransPruneReference(loaded.model, schedule), build)
    if build.anyres:  # the image-token count of a real image in landscape (2 x 1 tiles, unpadded rows)
        from transprune.runtime.inputs import ImageInputs

        n_image = ImageInputs(build).count(ANYRES_CASE_SIZES[0])
    else:
        n_image = build.n_image
    cases = CaseMaker(build, np.float16 if dtype == "fp16" else np.float32, n_image=n_image)
    report = {}
    for graph in manifest["graphs"]:
        kind = kind_of(graph["kind"])
        errors: dict[str, float] = {}
        labels = []
        for case in kind.validation_cases(build.graphs[graph["name"]], cases):
            got = run(graph["name"], case.feeds)
            expected = reference.run(graph["name"], case.feeds, compute=kind.reference)
            for output in case.outputs or expected:
                error = _compare(graph, output, case, got[output], expected[output], dtype)
                errors[output] = max(errors.get(output, 0.0), error)
            labels.append(case.label)
        report[graph["name"]] = {"cases": labels, "max_error": errors}
    return report


def _compare(graph: dict, output: str, case, got: np.ndarray, want: np.ndarray, dtype: str) -> float:
    name = graph["name"]
    if got.shape != want.shape:
        raise ValidationError(f"graph {name!r}, output {output!r} ({case.label}): shape {got.shape} but the "
                              f"reference has {want.shape}")
    rows = next((r for prefix, r in (case.rows or {}).items() if output.startswith(prefix)), None)
    if rows is not None:
        if got.ndim == 4:  # keys/values [B, H, T, E]: the token axis is 2
            got, want = got.transpose(0, 2, 1, 3), want.transpose(0, 2, 1, 3)
        got, want = got[rows], want[rows]
    if np.issubdtype(want.dtype, np.integer):
        if output == "kept" and dtype == "fp16":  # half precision may flip near-ties: require overlap
            overlap = min(len(np.intersect1d(g, w)) / max(1, len(w)) for g, w in zip(got, want))
            if overlap < 0.9:
                raise ValidationError(f"graph {name!r}, output 'kept' ({case.label}): only {overlap:.0%} of the "
                                      f"kept tokens agree with the reference (fp16 needs >= 90%)")
            return 1.0 - overlap
        wrong = int((got != want).sum())
        if wrong:
            raise GraphMismatch(name, output, case.label, float(np.abs(got - want).max()), 0.0)
        return 0.0
    want = want.astype(np.float64)
    error = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
    relative = TTV_TOLERANCE_FP16 if dtype == "fp16" and output == "ttv" else TOLERANCE[dtype]
    tolerance = relative * (float(np.abs(want).max()) if want.size else 0.0)
    if not error <= tolerance:  # NaN fails too
        raise GraphMismatch(name, output, case.label, error, tolerance)
    return error


def validate_chain(manifest: dict, *, build, loaded, schedule, backend) -> dict:
    """Runs the whole chain on a sample image + prompt next to the reference: kept indices
    identical at every stage and 16 greedy tokens identical (fp32); agreement reported for fp16.
    LLaVA-NeXT builds run the sample image at several aspect ratios (each its own image-token
    count and tiling), prepared by the runtime's own anyres preprocessing."""
    runs = [_ChainRun(build, loaded, image) for image in _chain_images(build)]
    results = [_validate_chain_image(manifest, run=run, reference=run.reference(loaded, schedule), backend=backend)
               for run in runs]
    first = dict(results[0])
    if build.anyres:
        first["images"] = results
    return first


def _chain_images(build) -> list:
    from transprune.sample_image import sample_image

    image = sample_image()
    return [image] if not build.anyres else [image.resize(size) for size in ANYRES_CHAIN_SIZES]


class _ChainRun:
    """One image of the chain check: its encoded prompt, and the reference's and our generations."""

    def __init__(self, build, loaded, image) -> None:
        from transprune.reference import encode_inputs
        from transprune.runtime.inputs import ImageInputs

        self.build, self.image = build, image
        self.encoded = encode_inputs(loaded.processor, [image], [VALIDATION_PROMPT])
        self.prepared = ImageInputs(build).prepare([image])
        self.where = (f" ({image.width}x{image.height} image, {self.prepared.image_tokens[0]} image tokens)"
                      if build.anyres else "")

    def reference(self, loaded, schedule):
        from transprune.reference import TransPruneReference

        encoded = self.encoded
        return TransPruneReference(loaded.model, schedule).generate(
            encoded["input_ids"], encoded["attention_mask"], encoded["pixel_values"],
            max_new_tokens=VALIDATION_TOKENS, image_sizes=encoded.get("image_sizes"))

    def ours(self, backend):
        from transprune.runtime.chain import Chain

        return Chain(self.build, backend).generate(
            self.encoded["input_ids"].numpy(), self.encoded["attention_mask"].numpy(), self.prepared.pixel_values,
            pack_index=self.prepared.pack_index, max_new_tokens=VALIDATION_TOKENS)


def agreement(ours, reference) -> dict:
    """How closely a generation follows a reference one: greedy tokens equal (of 16) and whether
    the first is, kept-index overlap per stage, and the largest logit difference over the steps
    both ran on the same tokens (up to the first that differs: after it the two continue
    different texts). Either side may be our chain's result or the PyTorch reference's."""
    (mine, my_kept, my_logits), (theirs, their_kept, their_logits) = _view(ours), _view(reference)
    same = [a == b for a, b in zip(mine, theirs)]
    shared_steps = same.index(False) + 1 if False in same else len(same)
    overlaps = [float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(got, want)]))
                for got, want in zip(my_kept, their_kept)]
    logit_error = max(float(np.abs(a - b).max()) for a, b in list(zip(my_logits, their_logits))[:shared_steps])
    return {"tokens_identical": sum(same), "tokens": len(same), "first_token_identical": bool(same and same[0]),
            "kept_overlap": overlaps, "max_logit_error": logit_error}


def _view(generation) -> tuple[list, list, list]:
    """(tokens of the first sample, kept indices per stage, logits per step) as numpy, from the
    runtime chain's result or the reference's (torch tensors, ``records``)."""
    if hasattr(generation, "records"):
        return (generation.tokens[0], [r.kept.numpy() for r in generation.records],
                [step.numpy() for step in generation.step_logits])
    return generation.tokens[0], [stage.kept for stage in generation.stages], list(generation.step_logits)


def _validate_chain_image(manifest: dict, *, run: "_ChainRun", reference, backend) -> dict:
    ours = run.ours(backend)
    exact = manifest["dtype"] == "fp32"
    for stage, (mine, theirs) in enumerate(zip(ours.stages, reference.records)):
        want = theirs.kept.numpy()
        if mine.kept.shape != want.shape:
            raise ValidationError(f"chain{run.where}: stage {stage} kept {mine.kept.shape[1]} image tokens, the "
                                  f"reference {want.shape[1]}")
        if exact and not np.array_equal(mine.kept, want):
            differ = int((mine.kept != want).sum())
            raise ValidationError(f"chain{run.where}: stage {stage} (after layer {mine.after_layer}): {differ} kept "
                                  f"indices differ from the reference")
    if exact and ours.tokens != reference.tokens:
        raise ValidationError(f"chain{run.where}: generated tokens differ from the reference: {ours.tokens} vs "
                              f"{reference.tokens}")
    agreed = agreement(ours, reference)
    return {"prompt": VALIDATION_PROMPT, "image_size": [run.image.height, run.image.width],
            "image_tokens": [run.prepared.image_tokens[0], *(stage.keep for stage in ours.stages)],
            "tokens": ours.tokens[0], "reference_tokens": reference.tokens[0],
            "tokens_identical": agreed["tokens_identical"], "kept_overlap": agreed["kept_overlap"], "exact": exact,
            "max_logit_error": agreed["max_logit_error"]}


def validate_build(build_dir: Path, manifest: dict, *, checkpoint: Path, schedule, progress=None) -> dict:
    """Per-graph checks, then the chain; returns the manifest's ``validation`` section.

    An int4 build is checked twice over. Exactness: the reference model's weights are replaced by
    their int4 values dequantized (``int4.quantize_reference``) and the graphs run with
    onnxruntime computing in float, so every graph and the chain must match as tightly as an fp32
    build: an export bug cannot hide behind quantization error. Accuracy: the chain is compared
    with the float model (the checkpoint as it is), both in float math and as onnxruntime runs it
    by default (int8 activations), and the agreement is reported, not required.
    """
    from transprune.checkpoints import load_llava
    from transprune.runtime.build import Build
    from transprune.runtime.ort_backend import OrtBackend

    from .int4 import Int4Weights, quantize_reference

    loaded = load_llava(str(checkpoint))
    build = Build.from_manifest(build_dir, manifest)
    weights = manifest.get("weights") or {}
    int4 = Int4Weights(weights["block_size"], tuple(weights["parts"])) if weights.get("format") == "int4" else None
    baseline = None
    if int4 is not None:
        if progress:
            progress("running the float model for the int4 accuracy report")
        runs = [_ChainRun(build, loaded, image) for image in _chain_images(build)]
        baseline = [run.reference(loaded, schedule) for run in runs]
        quantize_reference(loaded.model, int4, build.float_type)
    backend = OrtBackend(build, int4_accuracy_level=0 if int4 is not None else None)
    if progress:
        progress("validating graphs")
    graphs = validate_graphs(manifest, build=build, loaded=loaded, schedule=schedule, run=backend.run)
    if progress:
        progress("validating the chain")
    chain = validate_chain(manifest, build=build, loaded=loaded, schedule=schedule, backend=backend)
    report = {"dtype": manifest["dtype"], "tolerance": TOLERANCE[manifest["dtype"]], "graphs": graphs, "chain": chain}
    if int4 is not None:
        default = OrtBackend(build)  # what transprune-run uses
        report["int4_accuracy"] = {
            "against": "the float checkpoint as exported (fp32 reference), same image and prompt, 16 greedy tokens",
            "float_math": [agreement(run.ours(backend), base) for run, base in zip(runs, baseline)],
            "onnxruntime_default": [agreement(run.ours(default), base) for run, base in zip(runs, baseline)],
        }
    return report
