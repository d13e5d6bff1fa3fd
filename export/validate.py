"""Validation of a freshly exported build against the PyTorch reference.

Two levels, both on by default:

* every graph on its own, at three sizes (prompt lengths, past lengths, batch sizes), against the
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
    """Checks every graph at three sizes; returns {graph: {"cases": [...], "max_error": {output: e}}}.

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
    from transprune.runtime.inputs import ImageInputs
    from transprune.sample_image import sample_image

    image = sample_image()
    images = [image] if not build.anyres else [image.resize(size) for size in ANYRES_CHAIN_SIZES]
    results = [_validate_chain_image(manifest, build=build, loaded=loaded, schedule=schedule, backend=backend,
                                     image=picture, inputs=ImageInputs(build)) for picture in images]
    first = dict(results[0])
    if build.anyres:
        first["images"] = results
    return first


def _validate_chain_image(manifest: dict, *, build, loaded, schedule, backend, image, inputs) -> dict:
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.runtime.chain import Chain

    encoded = encode_inputs(loaded.processor, [image], [VALIDATION_PROMPT])
    reference = TransPruneReference(loaded.model, schedule).generate(
        encoded["input_ids"], encoded["attention_mask"], encoded["pixel_values"], max_new_tokens=VALIDATION_TOKENS,
        image_sizes=encoded.get("image_sizes"))
    prepared = inputs.prepare([image])
    ours = Chain(build, backend).generate(encoded["input_ids"].numpy(), encoded["attention_mask"].numpy(),
                                          prepared.pixel_values, pack_index=prepared.pack_index,
                                          max_new_tokens=VALIDATION_TOKENS)
    exact = manifest["dtype"] == "fp32"
    where = f" ({image.width}x{image.height} image, {prepared.image_tokens[0]} image tokens)" if build.anyres else ""
    overlaps = []
    for stage, (mine, theirs) in enumerate(zip(ours.stages, reference.records)):
        want = theirs.kept.numpy()
        if mine.kept.shape != want.shape:
            raise ValidationError(f"chain{where}: stage {stage} kept {mine.kept.shape[1]} image tokens, the reference "
                                  f"{want.shape[1]}")
        overlaps.append(float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(mine.kept, want)])))
        if exact and not np.array_equal(mine.kept, want):
            differ = int((mine.kept != want).sum())
            raise ValidationError(f"chain{where}: stage {stage} (after layer {mine.after_layer}): {differ} kept "
                                  f"indices differ from the reference")
    if exact and ours.tokens != reference.tokens:
        raise ValidationError(f"chain{where}: generated tokens differ from the reference: {ours.tokens} vs "
                              f"{reference.tokens}")
    same_tokens = sum(a == b for a, b in zip(ours.tokens[0], reference.tokens[0]))
    logit_error = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ours.step_logits, reference.step_logits))
    return {"prompt": VALIDATION_PROMPT, "image_size": [image.height, image.width],
            "image_tokens": [prepared.image_tokens[0], *(stage.keep for stage in ours.stages)],
            "tokens": ours.tokens[0], "reference_tokens": reference.tokens[0],
            "tokens_identical": same_tokens, "kept_overlap": overlaps, "exact": exact,
            "max_logit_error": logit_error}


def validate_build(build_dir: Path, manifest: dict, *, checkpoint: Path, schedule, progress=None) -> dict:
    """Per-graph checks, then the chain; returns the manifest's ``validation`` section."""
    from transprune.checkpoints import load_llava
    from transprune.runtime.build import Build
    from transprune.runtime.ort_backend import OrtBackend

    loaded = load_llava(str(checkpoint))
    build = Build.from_manifest(build_dir, manifest)
    backend = OrtBackend(build)
    if progress:
        progress("validating graphs")
    graphs = validate_graphs(manifest, build=build, loaded=loaded, schedule=schedule, run=backend.run)
    if progress:
        progress("validating the chain")
    chain = validate_chain(manifest, build=build, loaded=loaded, schedule=schedule, backend=backend)
    return {"dtype": manifest["dtype"], "tolerance": TOLERANCE[manifest["dtype"]], "graphs": graphs, "chain": chain}
