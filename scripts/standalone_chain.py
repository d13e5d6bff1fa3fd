#!/usr/bin/env python3
"""Run an exported TransPrune build with nothing but its directory, numpy and onnxruntime.

This is the host loop a C++ (or any other) service has to implement, written out in one file
that imports only the standard library, numpy and onnxruntime -- nothing from ``transprune``.
Everything it needs comes from BUILD_DIR/manifest.json:

* ``graphs``: the graphs in the order the chain runs them; per graph its ``kind``, ``file``,
  ``inputs`` / ``outputs`` (name, dtype, axes) and kind-specific ``attrs``;
* ``model.facts.n_image`` (image tokens per picture; null for LLaVA-NeXT, see below) and
  ``model.facts.image_token_id``;
* ``dtype``: the model dtype (fp32 or fp16); tensor specs name concrete types (float32, float16,
  int64).

Usage:
    python scripts/standalone_chain.py BUILD_DIR --input-ids IDS.npy --attention-mask MASK.npy \
        --pixel-values PIX.npy [--pack-index PACK.npy] [--max-new-tokens 16] --out RESULT.json \
        [--logits-out LOGITS.npy]

IDS/MASK are int64 [B, S], left-padded, each row holding exactly one run of n_image image tokens
(what LlavaProcessor produces); PIX is float32 [B, 3, H, W], already normalised. Tokenising and
image preprocessing are not shown here; the manifest describes both as plain data for hosts that
do them: ``prompt`` (tokenizer.json, the chat template rendered as ``before`` + prompt + ``after``,
the image slot token to expand to n_image ids) and ``image_preprocess`` (pad, resize, crop,
rescale, mean/std), which ``transprune.runtime`` implements with numpy and Pillow. Decoding is
greedy (argmax, lowest id on ties) for exactly --max-new-tokens steps.
RESULT.json: {"tokens": [[id, ...] per sample], "kept": [per prune stage: [[original image-token
index, ...] ascending, per sample]], "max_abs_first_logit": float}.

LLaVA-NeXT builds (``model.facts.anyres`` true) differ in three places, all visible in the manifest:
PIX is float32 [T, 3, H, W], every tile of every image (each image's base tile, then its grid tiles
row by row, image after image); PACK is int64 [B, N], per image token the row of the tiles' stacked
features [T * tile_tokens, D] it takes, -1 for the learned newline (``transprune.runtime.anyres``
computes tiles and plans from the image size; ``image_preprocess`` describes the tiling). N, the
image's token count, follows the image's size, and every sample of a batch must have the same N.
Each scorer's ``keep`` is then ``int(N * attrs.keep_ratio)`` (attrs.keep is null), and a segment's
position shift is whatever the prunes before it removed (attrs.position_shift is null).

The protocol, in short (graph names are the manifest's, shapes: B batch, S tokens):

  prefill   vision(pixel_values[, pack_index]) -> image_features
            embed(input_ids) -> embeddings
            prefill_inputs(embeddings, input_ids, attention_mask, image_features)
                -> hidden, position_ids, image_start
            for each segment s (layers first..last), in manifest order:
                segment_s(hidden, position_ids, attention_mask, past_* = gen_* = empty)
                    -> hidden_out, new_*[, ttv]
                keep new_* as segment s's prompt block (past_*), and the mask it ran with as its key mask
                if a scorer follows: scorer_s(...) -> a shorter sequence (pruned image tokens
                    removed), renumbered positions, the shorter mask, the kept image indices
            head(hidden) -> logits of the last position
  decode    embed(token) -> hidden [B, 1, D]; through every segment with its own cache (past_* the
            prompt block, gen_* the keys/values of the tokens generated so far, each step's new_*
            appended to gen_*); head.

Pruning changes the sequence length between segments, so every segment has its own KV cache
length, its own key mask and its own position numbering -- see ``decode_step``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnxruntime as ort

# 4 added, in each graph file's ONNX metadata, "transprune.graph": the graph's identity (name, kind,
# layers, attrs, dtype; for int4 builds the weight format too) that transprune.runtime checks
# against the manifest so that swapped files are refused; a host that trusts its build directory
# may ignore it, as this one does. Int4 builds (manifest "weights") need nothing else here: their
# graphs are standard ONNX (DequantizeLinear + MatMul) that onnxruntime runs as they are.
SUPPORTED_SCHEMA = 5  # 5: segments take a prompt block and a generated block and return new_* only
# The manifest's top-level "dtype" names the model dtype; tensor specs say "float" for it.
MODEL_DTYPES = {"fp32": np.float32, "fp16": np.float16}
SPEC_DTYPES = {"int64": np.int64, "float32": np.float32, "float16": np.float16}


class BuildError(Exception):
    """The build directory or the inputs are not usable; the message says why."""


# --------------------------------------------------------------------------------------------
# Loading the build
# --------------------------------------------------------------------------------------------
def safe_path(build_dir: Path, name: str, what: str) -> Path:
    """BUILD_DIR/name, refusing anything that could point outside the build directory.

    A manifest is data: a file entry like "../x.onnx", "/etc/x" or a symlink leading out of the
    directory must not make the host open (and execute) a graph from somewhere else.
    """
    if not isinstance(name, str) or not name:
        raise BuildError(f"{what}: file {name!r} is not a file name")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise BuildError(f"{what}: file {name!r} is an absolute path, which escapes the build directory; "
                         f"graph files must be relative to it")
    root = build_dir.resolve()
    path = (root / name).resolve()  # follows symlinks too
    if path != root and root not in path.parents:
        raise BuildError(f"{what}: file {name!r} escapes the build directory {root}")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Graph:
    """One manifest graph entry and its onnxruntime session.

    ``run(feeds)`` feeds exactly the inputs the manifest lists (cast to the manifest's dtypes) and
    returns {output name: array}. The manifest's names are checked against the ONNX file once, so
    a host can build its feeds from the manifest alone.
    """

    def __init__(self, build_dir: Path, entry: dict, model_dtype, options, providers, verify: bool) -> None:
        self.entry = entry
        self.name, self.kind, self.attrs = entry["name"], entry["kind"], entry.get("attrs", {})
        path = safe_path(build_dir, entry["file"], f"graph {self.name!r}")
        if verify:
            # sha256 lists the graph file and its external-data files, if any, by name
            for file, expected in entry.get("sha256", {}).items():
                if sha256(safe_path(build_dir, file, f"graph {self.name!r} (sha256)")) != expected:
                    raise BuildError(f"graph {self.name!r}: {file} does not match its sha256 in the manifest")
        if not path.is_file():
            raise BuildError(f"graph {self.name!r}: {path} does not exist")

        def dtype(spec):
            return model_dtype if spec["dtype"] == "float" else SPEC_DTYPES[spec["dtype"]]

        self.inputs = {t["name"]: t for t in entry["inputs"]}
        self.outputs = [t["name"] for t in entry["outputs"]]
        self.input_dtypes = {t["name"]: dtype(t) for t in entry["inputs"]}
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        found_in = [i.name for i in self.session.get_inputs()]
        found_out = [o.name for o in self.session.get_outputs()]
        if sorted(found_in) != sorted(self.inputs) or sorted(found_out) != sorted(self.outputs):
            raise BuildError(f"graph {self.name!r}: the ONNX file's inputs {found_in} / outputs {found_out} "
                             f"differ from the manifest's {list(self.inputs)} / {self.outputs}")

    def run(self, feeds: dict) -> dict:
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise BuildError(f"graph {self.name!r}: no value for input(s) {sorted(missing)}")
        arrays = {name: np.ascontiguousarray(feeds[name], dtype=self.input_dtypes[name]) for name in self.inputs}
        return dict(zip(self.outputs, self.session.run(self.outputs, arrays)))


def load_build(build_dir: Path, *, threads: int | None, verify: bool) -> tuple[dict, list[Graph]]:
    manifest_path = build_dir / "manifest.json"
    if not manifest_path.is_file():
        raise BuildError(f"{build_dir} has no manifest.json")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema_version") != SUPPORTED_SCHEMA:
        raise BuildError(f"manifest schema_version {manifest.get('schema_version')!r}; this host reads "
                         f"{SUPPORTED_SCHEMA}")
    if manifest.get("dtype") not in MODEL_DTYPES:
        raise BuildError(f"manifest dtype {manifest.get('dtype')!r} is not one of {sorted(MODEL_DTYPES)}")
    # Check every path before opening any graph: nothing outside BUILD_DIR is ever read.
    for entry in manifest["graphs"]:
        safe_path(build_dir, entry["file"], f"graph {entry['name']!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    graphs = [Graph(build_dir, entry, MODEL_DTYPES[manifest["dtype"]], options, ["CPUExecutionProvider"], verify)
              for entry in manifest["graphs"]]
    kinds = [g.kind for g in graphs]
    # The chain's shape: the three input graphs, then segment (scorer segment)*, then the head.
    if kinds[:3] != ["vision", "embed", "prefill_inputs"] or kinds[-1] != "head" or kinds[3] != "segment":
        raise BuildError(f"unexpected graph order {kinds}")
    middle = kinds[3:-1]
    if middle[0::2] != ["segment"] * len(middle[0::2]) or middle[1::2] != ["scorer"] * len(middle[1::2]) \
            or middle[-1] != "segment":
        raise BuildError(f"unexpected graph order {kinds}: expected segment, scorer, segment, ..., segment")
    return manifest, graphs


# --------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------
class Segment:
    """A segment graph plus what the host keeps for it between calls.

    Each segment runs after a different number of prunes, so each has its own sequence: its KV
    cache (prefill's new_* outputs fed back as the past_* prompt block, every later call's new_*
    appended to the gen_* block: this host keeps both as arrays of exactly their length, the
    simplest way; transprune's runtime keeps one preallocated buffer each), its key mask [B, T_s] (1 = real token,
    0 = left padding; one column per cached position) and the number of image tokens that had
    been removed before it ran (``removed``), which shifts its positions.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        # the cache triples (prompt block input, generated block input, new output), listed by the manifest
        self.kv = [tuple(triple) for triple in graph.attrs["kv"]]
        for _, _, new in self.kv:
            if new not in graph.outputs:
                raise BuildError(f"graph {graph.name!r} has no output {new!r} for its cache input")
        self.cache: dict[str, np.ndarray] = {}
        self.key_mask: np.ndarray | None = None
        self.removed = 0

    def empty_cache(self, batch: int) -> dict:
        """Zero-length blocks for prefill, shaped from the manifest's axes ("batch", Hkv, "past" or
        "gen", head_dim) with batch = B and the length axis 0."""
        feeds = {}
        for past, gen, _ in self.kv:
            for name in (past, gen):
                spec = self.graph.inputs[name]
                sizes = {"batch": batch, "past": 0, "gen": 0}
                shape = tuple(axis if isinstance(axis, int) else sizes[axis] for axis in spec["axes"])
                feeds[name] = np.zeros(shape, dtype=self.graph.input_dtypes[name])
        return feeds

    def run(self, hidden, position_ids, key_mask, cache: dict) -> dict:
        out = self.graph.run({"hidden": hidden, "position_ids": position_ids, "attention_mask": key_mask, **cache})
        prefill = not any(cache[past].shape[2] for past, _, _ in self.kv)
        self.cache = dict(cache)
        for past, gen, new in self.kv:
            if prefill:
                self.cache[past] = out[new]
            else:
                self.cache[gen] = np.concatenate([cache[gen], out[new]], axis=2)
        return out


class ChainHost:
    def __init__(self, manifest: dict, graphs: list[Graph]) -> None:
        facts = manifest["model"]["facts"]
        self.anyres = bool(facts.get("anyres", False))
        # image tokens per picture: fixed for LLaVA-1.5; for LLaVA-NeXT set per prompt by pack_index
        self.n_image = None if self.anyres else int(facts["n_image"])
        low, high = manifest["limits"]["image_tokens"]["min"], manifest["limits"]["image_tokens"]["max"]
        self.image_range = (int(low), int(high))
        self.image_token_id = int(facts["image_token_id"])
        self.graphs = graphs
        self.by_kind = {g.kind: g for g in graphs if g.kind in ("vision", "embed", "prefill_inputs", "head")}
        self.segments = [Segment(g) for g in graphs if g.kind == "segment"]
        self.next_position: np.ndarray | None = None

    def check_inputs(self, input_ids, attention_mask, pixel_values, pack_index=None) -> None:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise BuildError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} must both be [B, S]")
        spec = self.by_kind["vision"].inputs["pixel_values"]["axes"]
        fixed = tuple(spec[1:])  # (3, image_size, image_size)
        if self.anyres:
            if pack_index is None or pack_index.ndim != 2 or pack_index.shape[0] != input_ids.shape[0]:
                raise BuildError("a LLaVA-NeXT build needs --pack-index, int64 [B, N]: per image token its tile "
                                 "feature row, -1 for a newline")
            low, high = self.image_range
            if not low <= pack_index.shape[1] <= high:
                raise BuildError(f"pack_index gives {pack_index.shape[1]} image tokens, outside the build's {low}..{high}")
            self.n_image = pack_index.shape[1]
            if tuple(pixel_values.shape[1:]) != fixed:
                raise BuildError(f"pixel_values {pixel_values.shape} must be [tiles, {', '.join(map(str, fixed))}]")
        elif pixel_values.shape[0] != input_ids.shape[0] or tuple(pixel_values.shape[1:]) != fixed:
            raise BuildError(f"pixel_values {pixel_values.shape} must be [B, {', '.join(map(str, fixed))}]")
        for b in range(input_ids.shape[0]):
            mask = attention_mask[b]
            real = int(mask.sum())
            # left padding: decode appends real tokens on the right, so padding must be on the left
            if real == 0 or not (np.all(mask[-real:] == 1) and np.all(mask[:-real] == 0)):
                raise BuildError(f"sample {b}: attention_mask must be left padding (0s) then real tokens (1s)")
            where = np.flatnonzero(input_ids[b] == self.image_token_id)
            if len(where) != self.n_image or where[-1] - where[0] + 1 != self.n_image or not np.all(mask[where] == 1):
                raise BuildError(f"sample {b}: needs exactly one contiguous run of {self.n_image} image tokens "
                                 f"(id {self.image_token_id}), found {len(where)}")

    def prefill(self, input_ids, attention_mask, pixel_values, pack_index=None):
        """-> (logits [B, V] of the last prompt position, kept indices per stage [B, keep])."""
        batch = input_ids.shape[0]
        vision_feeds = {"pixel_values": pixel_values}
        if self.anyres:
            vision_feeds["pack_index"] = pack_index
        features = self.by_kind["vision"].run(vision_feeds)["image_features"]
        embeddings = self.by_kind["embed"].run({"input_ids": input_ids})["embeddings"]
        prepared = self.by_kind["prefill_inputs"].run({"embeddings": embeddings, "input_ids": input_ids,
                                                       "attention_mask": attention_mask,
                                                       "image_features": features})
        hidden, positions, image_start = prepared["hidden"], prepared["position_ids"], prepared["image_start"]
        mask = attention_mask
        # Which ORIGINAL image tokens (0..n_image-1) are still in the sequence, per sample, and their
        # running TTV sum; both shrink with every prune (the scorer returns them compacted).
        alive = np.tile(np.arange(self.n_image, dtype=np.int64), (batch, 1))
        ttv_sum = np.zeros((batch, self.n_image), dtype=np.float32)
        # The next token's position in the UNPRUNED numbering = number of real prompt tokens.
        self.next_position = attention_mask.sum(-1).astype(np.int64)
        kept_per_stage = []
        segment_iter = iter(self.segments)
        last = None  # outputs of the segment that ran last (a scorer reads its ttv)
        for graph in self.graphs[3:-1]:  # manifest order: segment, scorer, segment, ..., segment
            if graph.kind == "segment":
                segment = next(segment_iter)
                out = segment.run(hidden, positions, mask, segment.empty_cache(batch))
                segment.key_mask = mask
                segment.removed = self.n_image - alive.shape[1]
                hidden, last = out["hidden_out"], out
                continue
            # a scorer: rank the alive image tokens after the previous segment and drop the worst
            feeds = {"hidden": hidden, "position_ids": positions, "attention_mask": mask,
                     "image_start": image_start, "alive": alive,
                     # keep is a 0-d int64 input: fixed per scorer in the manifest, or for LLaVA-NeXT
                     # the schedule's share of this prompt's image tokens, int(n_image * ratio)
                     "keep": np.array(graph.attrs["keep"] if graph.attrs["keep"] is not None else
                                      int(self.n_image * graph.attrs["keep_ratio"]), dtype=np.int64)}
            if "query_rows" in graph.inputs:
                # 0-d int64, IGA builds: the trailing positions that hold some sample's text after its
                # image span (every sample ends at S: left padding), at least 1; IGA's queries are
                # only these rows (builds exported before this input run every row instead)
                feeds["query_rows"] = np.array(max(1, hidden.shape[1] - int(image_start.min()) - alive.shape[1]),
                                               dtype=np.int64)
            if graph.attrs["uses_ttv"]:
                feeds["ttv_sum"] = ttv_sum
                # this segment's TTV [B, seq]; a segment without accumulation layers adds nothing
                feeds["ttv"] = last.get("ttv", np.zeros(hidden.shape[:2], dtype=np.float32))
            result = graph.run(feeds)
            # S' = S - alive + keep: prefix, kept image tokens (ascending), suffix; positions of the
            # shorter sequence are renumbered 0..n-1 over its real tokens by the scorer itself.
            hidden, positions, mask = result["hidden_out"], result["position_ids_out"], result["attention_mask_out"]
            alive = result["kept"]
            ttv_sum = result.get("ttv_sum_out", ttv_sum)
            kept_per_stage.append(alive)
        logits = self.by_kind["head"].run({"hidden": hidden})["logits"]
        return logits, kept_per_stage

    def decode_step(self, tokens: np.ndarray) -> np.ndarray:
        """tokens [B] -> logits [B, V]; every segment's cache and key mask grow by one.

        Positions: in prefill segment s saw the sequence with ``removed`` image tokens already gone
        and numbered contiguously, so the prompt's real tokens held positions 0..n_real-removed-1
        there. The new token therefore sits at (its full position) - (tokens removed before s):
        different segments give the same token different positions. No scorer runs in decode.
        """
        hidden = self.by_kind["embed"].run({"input_ids": tokens[:, None].astype(np.int64)})["embeddings"]
        new_column = np.ones((tokens.shape[0], 1), dtype=np.int64)
        for segment in self.segments:
            segment.key_mask = np.concatenate([segment.key_mask, new_column], axis=1)  # [B, T_s + 1]
            positions = (self.next_position - segment.removed)[:, None]
            out = segment.run(hidden, positions, segment.key_mask, segment.cache)
            hidden = out["hidden_out"]
        self.next_position = self.next_position + 1
        return self.by_kind["head"].run({"hidden": hidden})["logits"]

    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens: int, pack_index=None) -> dict:
        self.check_inputs(input_ids, attention_mask, pixel_values, pack_index)
        logits, kept = self.prefill(input_ids, attention_mask, pixel_values, pack_index)
        step_logits = []  # the logits each token was picked from
        tokens: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        for step in range(max_new_tokens):
            step_logits.append(logits)
            picked = np.argmax(logits, axis=-1).astype(np.int64)  # greedy; first index wins ties
            for b, token in enumerate(picked.tolist()):
                tokens[b].append(int(token))
            if step == max_new_tokens - 1:
                break  # the last token needs no forward pass
            logits = self.decode_step(picked)
        return {"tokens": tokens, "kept": [k.tolist() for k in kept],
                "max_abs_first_logit": float(np.abs(step_logits[0]).max()), "step_logits": step_logits}


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--input-ids", type=Path, required=True, help="int64 [B, S] .npy, left-padded")
    parser.add_argument("--attention-mask", type=Path, required=True, help="int64 [B, S] .npy")
    parser.add_argument("--pixel-values", type=Path, required=True,
                        help="float32 [B, 3, H, W] .npy (LLaVA-NeXT: [tiles, 3, H, W])")
    parser.add_argument("--pack-index", type=Path, default=None,
                        help="LLaVA-NeXT builds: int64 [B, N] .npy, per image token its tile-feature row (-1: newline)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--skip-sha256", action="store_true", help="do not verify the graph files' sha256")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--logits-out", type=Path, default=None,
                        help="also save every step's logits as one float32 [steps, B, V] .npy")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    try:
        manifest, graphs = load_build(args.build_dir, threads=args.threads, verify=not args.skip_sha256)
        input_ids = np.load(args.input_ids, allow_pickle=False).astype(np.int64)
        attention_mask = np.load(args.attention_mask, allow_pickle=False).astype(np.int64)
        pixel_values = np.load(args.pixel_values, allow_pickle=False)
        pack_index = np.load(args.pack_index, allow_pickle=False).astype(np.int64) if args.pack_index else None
        result = ChainHost(manifest, graphs).generate(input_ids, attention_mask, pixel_values, args.max_new_tokens,
                                                      pack_index=pack_index)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    step_logits = result.pop("step_logits")
    if args.logits_out is not None:
        np.save(args.logits_out, np.stack(step_logits).astype(np.float32))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
