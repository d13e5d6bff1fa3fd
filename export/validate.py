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

from dataclasses import dataclass
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


class ValidationError(TransPruneError):
    """The exported build disagrees with the reference."""


class GraphMismatch(ValidationError):
    def __init__(self, graph: str, output: str, case: str, error: float, tolerance: float) -> None:
        self.graph, self.output, self.case, self.error, self.tolerance = graph, output, case, error, tolerance
        super().__init__(f"graph {graph!r}, output {output!r} ({case}): max error {error:.3g} against the PyTorch "
                         f"reference exceeds {tolerance:.3g}; the export of this graph is wrong")


@dataclass
class _Case:
    label: str
    feeds: dict  # numpy inputs of the graph (model-dtype floats already cast)
    expected: dict  # numpy reference outputs (fp32 floats)
    rows: dict | None = None  # output -> [B, T] bool: compare only these tokens (real, not padding)


def validate_graphs(build_dir: Path, manifest: dict, *, loaded, schedule, run) -> dict:
    """Checks every graph at three sizes; returns {graph: {"cases": [...], "max_error": {output: e}}}."""
    import torch

    from transprune.reference import TransPruneReference

    dtype = manifest["dtype"]
    float_type = np.float16 if dtype == "fp16" else np.float32
    reference = TransPruneReference(loaded.model, schedule)
    cases = _CaseMaker(reference, manifest, float_type)
    report = {}
    with torch.no_grad():
        for graph in manifest["graphs"]:
            errors: dict[str, float] = {}
            labels = []
            for case in getattr(cases, graph["kind"])(graph):
                got = run(graph["name"], case.feeds)
                for output, want in case.expected.items():
                    error = _compare(graph, output, case, got[output], want, dtype)
                    errors[output] = max(errors.get(output, 0.0), error)
                labels.append(case.label)
            report[graph["name"]] = {"cases": labels, "max_error": errors}
    return report


def _compare(graph: dict, output: str, case: _Case, got: np.ndarray, want: np.ndarray, dtype: str) -> float:
    name = graph["name"]
    if got.shape != want.shape:
        raise ValidationError(f"graph {name!r}, output {output!r} ({case.label}): shape {got.shape} but the "
                              f"reference has {want.shape}")
    if case.rows is not None and output in case.rows:
        rows = case.rows[output]
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


class _CaseMaker:
    """Random inputs at three sizes per graph kind, and the reference's outputs for them."""

    def __init__(self, reference, manifest: dict, float_type) -> None:
        import torch

        self.torch = torch
        self.ref = reference
        self.float_type = float_type
        facts = manifest["model"]["facts"]
        self.n_image, self.hidden, self.image_size = facts["n_image"], facts["hidden_size"], facts["image_size"]
        self.image_token_id, self.vocab = facts["image_token_id"], facts["vocab_size"]
        self.gen = torch.Generator().manual_seed(1234)

    # helpers ---------------------------------------------------------------------------------
    def randn(self, *shape, scale=1.0):
        """Random floats already rounded to the build's dtype, so both sides see the same values."""
        t = self.torch.randn(*shape, generator=self.gen) * scale
        return t.to(self.torch.float16).float() if self.float_type == np.float16 else t

    def feed(self, t):
        t = t.detach()
        return t.numpy().astype(self.float_type) if t.is_floating_point() else t.numpy()

    def left_padded_mask(self, batch: int, length: int, pad: int):
        mask = self.torch.ones(batch, length, dtype=self.torch.int64)
        if batch > 1:
            mask[1, :pad] = 0  # the second sample is shorter (left padding)
        return mask

    @staticmethod
    def out(t):
        t = t.detach()
        return t.float().numpy() if t.is_floating_point() else t.numpy()

    # graph kinds -----------------------------------------------------------------------------
    def vision(self, graph):
        for batch in (1, 2, 3):
            pixels = self.randn(batch, 3, self.image_size, self.image_size)
            yield _Case(f"batch {batch}", {"pixel_values": pixels.numpy()},
                        {"image_features": self.out(self.ref.image_features(pixels))})

    def embed(self, graph):
        for batch, seq in ((1, 1), (2, 13), (1, self.n_image + 40)):
            ids = self.torch.randint(0, self.vocab, (batch, seq), generator=self.gen)
            yield _Case(f"batch {batch}, {seq} tokens", {"input_ids": ids.numpy()},
                        {"embeddings": self.out(self.ref.lm.embed_tokens(ids))})

    def prefill_inputs(self, graph):
        from transprune.masks import positions_from_mask

        torch = self.torch
        for batch, prefix, suffix in ((1, 1, 0), (2, 5, 9), (1, 35, 200)):
            seq = prefix + self.n_image + suffix
            ids = torch.randint(0, self.vocab, (batch, seq), generator=self.gen)
            ids[ids == self.image_token_id] = 0
            ids[:, prefix:prefix + self.n_image] = self.image_token_id
            mask = self.left_padded_mask(batch, seq, pad=min(prefix, 3))
            embeddings, features = self.randn(batch, seq, self.hidden), self.randn(batch, self.n_image, self.hidden)
            slots = (ids == self.image_token_id)[..., None]
            expected = {"hidden": self.out(embeddings.masked_scatter(slots, features)),
                        "position_ids": self.out(positions_from_mask(mask)),
                        "image_start": np.full(batch, prefix, dtype=np.int64)}
            yield _Case(f"batch {batch}, {seq} tokens", {"embeddings": self.feed(embeddings), "input_ids": ids.numpy(),
                                                         "attention_mask": mask.numpy(),
                                                         "image_features": self.feed(features)}, expected)

    def segment(self, graph):
        from transprune.masks import additive_causal_mask, positions_from_mask
        from transprune.reference import SegmentKVCache

        torch, ref = self.torch, self.ref
        first, last = graph["layers"]
        ttv_layers = set(graph["attrs"]["ttv_layers"])
        kv = [t for t in graph["inputs"] if t["name"].startswith("past_")]
        _, heads, _, head_dim = kv[0]["axes"]
        # prefill with a whole image span, one decode step over a long past, a short chunk
        for batch, seq, past in ((2, self.n_image + 30, 0), (2, 1, self.n_image + 29), (1, 17, 5)):
            key_mask = self.left_padded_mask(batch, past + seq, pad=3)
            positions = positions_from_mask(key_mask)[:, past:]
            hidden = self.randn(batch, seq, self.hidden)
            feeds = {"hidden": self.feed(hidden), "position_ids": positions.numpy(), "attention_mask": key_mask.numpy()}
            cache = SegmentKVCache(ref.num_layers)
            for layer in range(first, last + 1):
                key, value = self.randn(batch, heads, past, head_dim), self.randn(batch, heads, past, head_dim)
                feeds[f"past_key.{layer}"], feeds[f"past_value.{layer}"] = self.feed(key), self.feed(value)
                if past:
                    cache.update(key, value, layer - 1)
            rope = ref.lm.rotary_emb(hidden, positions)
            mask = additive_causal_mask(key_mask, seq, hidden.dtype)
            token_mask = key_mask[:, past:]
            ttv = None
            for layer in range(first, last + 1):
                hidden, layer_ttv = ref.run_layer(layer - 1, hidden, rope, mask, cache, token_mask, layer in ttv_layers)
                if layer_ttv is not None:
                    ttv = layer_ttv if ttv is None else ttv + layer_ttv
            expected = {"hidden_out": self.out(hidden)}
            for layer in range(first, last + 1):
                expected[f"present_key.{layer}"] = self.out(cache.keys[layer - 1])
                expected[f"present_value.{layer}"] = self.out(cache.values[layer - 1])
            if any(t["name"] == "ttv" for t in graph["outputs"]):
                expected["ttv"] = self.out(ttv)
            # padding rows attend to nothing; their values are never read, so only real tokens count
            new_rows, all_rows = token_mask.numpy() > 0, key_mask.numpy() > 0
            rows = {name: all_rows if name.startswith("present_") else new_rows for name in expected}
            yield _Case(f"batch {batch}, {seq} new tokens, {past} past", feeds, expected, rows=rows)

    def scorer(self, graph):
        from transprune.masks import additive_causal_mask, positions_from_mask

        torch, ref = self.torch, self.ref
        attrs = graph["attrs"]
        stage = next(i for i, (_, last) in enumerate(ref.segments) if last == attrs["after_layer"])
        n_alive = self.n_image if stage == 0 else ref.keep_counts[stage - 1]
        for batch, prefix, suffix in ((2, 6, 5), (2, 4, 20), (1, 35, 60)):
            seq = prefix + n_alive + suffix
            key_mask = self.left_padded_mask(batch, seq, pad=3)
            positions = positions_from_mask(key_mask)
            hidden = self.randn(batch, seq, self.hidden)
            image_start = torch.full((batch,), prefix, dtype=torch.int64)
            alive = torch.stack([torch.randperm(self.n_image, generator=self.gen)[:n_alive].sort().values
                                 for _ in range(batch)])
            ttv_sum = self.randn(batch, n_alive).abs()
            ttv = self.randn(batch, seq).abs()
            feeds = {"hidden": self.feed(hidden), "position_ids": positions.numpy(), "attention_mask": key_mask.numpy(),
                     "image_start": image_start.numpy(), "alive": alive.numpy(),
                     "keep": np.array(attrs["keep"], dtype=np.int64)}
            if attrs["uses_ttv"]:
                feeds["ttv_sum"], feeds["ttv"] = ttv_sum.numpy(), ttv.numpy()
                ttv_sum = ttv_sum + torch.gather(ttv, 1, image_start[:, None] + torch.arange(n_alive))
            rope = ref.lm.rotary_emb(hidden, positions)
            mask = additive_causal_mask(key_mask, seq, hidden.dtype)
            hidden_out, mask_out, ttv_out, record = ref.prune(stage, hidden, key_mask, image_start, alive, ttv_sum,
                                                              rope, mask)
            expected = {"hidden_out": self.out(hidden_out), "position_ids_out": self.out(positions_from_mask(mask_out)),
                        "attention_mask_out": self.out(mask_out), "kept": self.out(record.kept),
                        "score": self.out(record.score)}
            if attrs["uses_ttv"]:
                expected["ttv_sum_out"] = self.out(ttv_out)
            if self.float_type == np.float16:  # rows follow `kept`, which fp16 may change: compare scores only
                expected = {k: expected[k] for k in ("score", "kept")}
            yield _Case(f"batch {batch}, {seq} tokens, {n_alive} image tokens alive", feeds, expected)

    def head(self, graph):
        for batch, seq in ((1, 1), (2, 7), (1, 40)):
            hidden = self.randn(batch, seq, self.hidden)
            yield _Case(f"batch {batch}, {seq} tokens", {"hidden": self.feed(hidden)},
                        {"logits": self.out(self.ref.head(hidden))})


def validate_chain(build_dir: Path, manifest: dict, *, loaded, schedule, run) -> dict:
    """Runs the whole chain on a sample image + prompt next to the reference: kept indices
    identical at every stage and 16 greedy tokens identical (fp32); agreement reported for fp16."""
    from transprune.reference import TransPruneReference, encode_inputs
    from transprune.runtime.chain import Chain
    from transprune.sample_image import sample_image

    inputs = encode_inputs(loaded.processor, [sample_image()], [VALIDATION_PROMPT])
    reference = TransPruneReference(loaded.model, schedule).generate(
        inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"], max_new_tokens=VALIDATION_TOKENS)
    chain = Chain(manifest["graphs"], run, n_image=manifest["model"]["facts"]["n_image"])
    pixels = inputs["pixel_values"].numpy()
    ours = chain.generate(inputs["input_ids"].numpy(), inputs["attention_mask"].numpy(), pixels,
                          max_new_tokens=VALIDATION_TOKENS)
    exact = manifest["dtype"] == "fp32"
    overlaps = []
    for stage, (mine, theirs) in enumerate(zip(ours.stages, reference.records)):
        want = theirs.kept.numpy()
        overlaps.append(float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(mine.kept, want)])))
        if exact and not np.array_equal(mine.kept, want):
            differ = int((mine.kept != want).sum())
            raise ValidationError(f"chain: stage {stage} (after layer {mine.after_layer}): {differ} kept indices "
                                  f"differ from the reference")
    if exact and ours.tokens != reference.tokens:
        raise ValidationError(f"chain: generated tokens differ from the reference: {ours.tokens} vs {reference.tokens}")
    same_tokens = sum(a == b for a, b in zip(ours.tokens[0], reference.tokens[0]))
    logit_error = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ours.step_logits, reference.step_logits))
    return {"prompt": VALIDATION_PROMPT, "tokens": ours.tokens[0], "reference_tokens": reference.tokens[0],
            "tokens_identical": same_tokens, "kept_overlap": overlaps, "exact": exact,
            "max_logit_error": logit_error}


def validate_build(build_dir: Path, manifest: dict, *, checkpoint: Path, schedule, progress=None) -> dict:
    """Per-graph checks, then the chain; returns the manifest's ``validation`` section."""
    from transprune.checkpoints import load_llava
    from transprune.runtime.ort_runner import OrtGraphs

    loaded = load_llava(str(checkpoint))
    run = OrtGraphs(build_dir, manifest["graphs"]).run
    if progress:
        progress("validating graphs")
    graphs = validate_graphs(build_dir, manifest, loaded=loaded, schedule=schedule, run=run)
    if progress:
        progress("validating the chain")
    chain = validate_chain(build_dir, manifest, loaded=loaded, schedule=schedule, run=run)
    return {"dtype": manifest["dtype"], "tolerance": TOLERANCE[manifest["dtype"]], "graphs": graphs, "chain": chain}
