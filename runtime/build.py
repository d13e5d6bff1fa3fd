"""A build directory, opened and checked: what the chain, the backends and the inputs need from it.

``Build.open`` verifies the manifest (schema, paths inside the directory, sha256 of every file),
then reads it into typed pieces once, so nothing downstream indexes raw JSON:
segments with their cache pairs and position shifts, each scorer paired with the segment it
follows (by name, not by position), the model facts and the sequence limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError
from transprune.schedule import Schedule

from .manifest import ManifestError, load_manifest, manifest_files, resolve_inside

FLOAT_TYPES = {"fp32": np.float32, "fp16": np.float16}
# Upper bounds for manifest numbers that size memory (cache buffers, masks, position tables): far
# above any LLaVA (7B: 4,096 positions, 32 heads of 128, 576 image tokens; NeXT: at most 2,928),
# low enough that a hostile manifest cannot ask for terabytes before anything checks it.
MAX_POSITIONS = 1 << 20
MAX_HEADS, MAX_HEAD_DIM = 1024, 4096
MAX_IMAGE_TOKENS = 1 << 16
TENSOR_TYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: type
    axes: tuple  # ints (fixed) and names (dynamic)


# graphs that run once per decoded token as well as in prefill (the others run in prefill only)
PER_TOKEN_KINDS = ("embed", "segment", "head")


@dataclass(frozen=True)
class GraphInfo:
    name: str
    kind: str
    file: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    attrs: dict
    layers: tuple[int, int] | None  # a segment's decoder layers, 1-based and inclusive

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases the graph runs in: prefill, and decode for the per-token graphs."""
        return ("prefill", "decode") if self.kind in PER_TOKEN_KINDS else ("prefill",)

    def call_phase(self, feeds: dict) -> str:
        """``decode`` for a one-token call of a per-token graph, else ``prefill``."""
        first = self.inputs[0].name
        return "decode" if self.kind in PER_TOKEN_KINDS and np.shape(feeds[first])[1] == 1 else "prefill"


@dataclass(frozen=True)
class SegmentInfo:
    graph: GraphInfo
    index: int
    layers: tuple[int, int]  # 1-based, inclusive
    kv: tuple[tuple[str, str, str], ...]  # (prompt block input, generated block input, new output) per layer and part
    kv_heads: int
    head_dim: int
    position_shift: int | None  # image tokens pruned before this segment ran (None: per image, anyres)
    has_ttv: bool  # whether the segment outputs the TTV its scorer reads

    @property
    def name(self) -> str:
        return self.graph.name


@dataclass(frozen=True)
class ScorerInfo:
    graph: GraphInfo
    after_segment: int
    after_layer: int
    keep: int | None  # image tokens kept (None for anyres builds: int(n_image * keep_ratio) per image)
    keep_ratio: float
    uses_ttv: bool
    uses_iga: bool

    @property
    def name(self) -> str:
        return self.graph.name


@dataclass
class Build:
    directory: Path
    manifest: dict
    graphs: dict[str, GraphInfo]
    segments: list[SegmentInfo]
    scorers: dict[int, ScorerInfo]  # segment index -> the scorer that runs after it
    float_type: type
    n_image: int | None  # image tokens per image; None for anyres builds, where it follows the image size
    image_token_id: int
    eos_token_id: int | None
    pad_token_id: int | None
    image_size: int
    limits: dict
    schedule: Schedule
    anyres: bool = False  # LLaVA-NeXT: tiles and a variable image-token count per image
    tile_tokens: int | None = None  # anyres: vision features per tile
    verified: bool = True  # whether file checksums are checked (backends apply it to their own files)

    @classmethod
    def open(cls, directory: Path, *, verify: bool = True) -> "Build":
        directory = Path(directory)
        build = cls.from_manifest(directory, load_manifest(directory, verify=verify))
        build.verified = verify
        return build

    @classmethod
    def from_manifest(cls, directory: Path, manifest: dict) -> "Build":
        """A build from an already loaded manifest (the exporter validates before writing it)."""
        try:
            return cls._parse(Path(directory), manifest)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ManifestError(f"{directory}: the manifest is malformed ({type(exc).__name__}: {exc}); "
                                f"re-export the build") from None

    @classmethod
    def _parse(cls, directory: Path, manifest: dict) -> "Build":
        if manifest["dtype"] not in FLOAT_TYPES:
            raise ManifestError(f"{directory}: model dtype {manifest['dtype']!r} is not one of {list(FLOAT_TYPES)}")
        graphs = {}
        for entry in manifest["graphs"]:
            graphs[entry["name"]] = GraphInfo(
                name=entry["name"], kind=entry["kind"], file=resolve_inside(directory, entry["file"]),
                inputs=tuple(_tensor(t) for t in entry["inputs"]),
                outputs=tuple(_tensor(t) for t in entry["outputs"]), attrs=dict(entry.get("attrs", {})),
                layers=tuple(entry["layers"]) if entry.get("layers") else None)
        _check_order(directory, [g.kind for g in graphs.values()])
        segments, scorers = [], {}
        for graph in graphs.values():
            if graph.kind == "segment":
                inputs = {t.name: t for t in graph.inputs}
                kv = tuple((past, gen, new) for past, gen, new in graph.attrs["kv"])
                _, heads, _, head_dim = inputs[kv[0][0]].axes
                heads = _bounded(heads, 1, MAX_HEADS, f"{graph.name}'s key/value heads")
                head_dim = _bounded(head_dim, 1, MAX_HEAD_DIM, f"{graph.name}'s head size")
                shift = graph.attrs["position_shift"]
                segments.append(SegmentInfo(graph, len(segments), graph.layers, kv, int(heads), int(head_dim),
                                            None if shift is None else int(shift),
                                            any(t.name == "ttv" for t in graph.outputs)))
        by_last_layer = {s.layers[1]: s.index for s in segments}
        for graph in graphs.values():
            if graph.kind == "scorer":
                after = by_last_layer.get(graph.attrs["after_layer"])
                if after is None or after == len(segments) - 1:
                    raise ManifestError(f"{directory}: scorer {graph.name!r} runs after layer "
                                        f"{graph.attrs['after_layer']}, which ends no segment; re-export the build")
                keep = graph.attrs["keep"]
                scorers[after] = ScorerInfo(graph, after, int(graph.attrs["after_layer"]),
                                            None if keep is None else int(keep), float(graph.attrs["keep_ratio"]),
                                            bool(graph.attrs["uses_ttv"]), bool(graph.attrs["uses_iga"]))
        if len(scorers) != len(segments) - 1:
            raise ManifestError(f"{directory}: {len(segments)} segments need {len(segments) - 1} scorers between "
                                f"them, the manifest has {len(scorers)}; re-export the build")
        schedule = Schedule.from_dict(manifest["schedule"])
        for after, scorer in scorers.items():  # the chain reads keep counts from the schedule
            if scorer.keep_ratio != schedule.ratios[after]:
                raise ManifestError(f"{directory}: scorer {scorer.name!r} keeps {scorer.keep_ratio} of the image "
                                    f"tokens, the schedule says {schedule.ratios[after]}; re-export the build")
        facts = manifest["model"]["facts"]
        anyres = bool(facts.get("anyres", False))
        limits = manifest["limits"]
        image_tokens = limits["image_tokens"]
        total = _bounded(limits["max_total_tokens"], 2, MAX_POSITIONS, "limits.max_total_tokens")
        _bounded(limits["max_text_tokens"], 1, total, "limits.max_text_tokens")
        low = _bounded(image_tokens["min"], 1, MAX_IMAGE_TOKENS, "limits.image_tokens.min")
        _bounded(image_tokens["max"], low, min(MAX_IMAGE_TOKENS, total - 1), "limits.image_tokens.max")
        if not anyres and not image_tokens["min"] == image_tokens["max"] == facts["n_image"]:
            raise ValueError(f"image_tokens {image_tokens} do not match the model's {facts['n_image']}")
        if not anyres:  # each scorer keeps what the schedule says, and fewer tokens than it is given
            expected = list(schedule.keep_counts(int(facts["n_image"])))
            found = [scorers[index].keep for index in sorted(scorers)]
            if found != expected:
                raise ManifestError(f"{directory}: the scorers keep {found} image tokens, the schedule keeps "
                                    f"{expected} of {facts['n_image']}; re-export the build")
        return cls(directory=directory, manifest=manifest, graphs=graphs, segments=segments, scorers=scorers,
                   float_type=FLOAT_TYPES[manifest["dtype"]], n_image=None if anyres else int(facts["n_image"]),
                   image_token_id=int(facts["image_token_id"]), eos_token_id=facts.get("eos_token_id"),
                   pad_token_id=facts.get("pad_token_id"), image_size=int(facts["image_size"]),
                   limits=dict(manifest["limits"]), schedule=schedule,
                   anyres=anyres, tile_tokens=int(facts["tile_tokens"]) if anyres else None)

    def graph(self, kind: str) -> GraphInfo:
        """The one graph of a kind that occurs once (vision, embed, prefill_inputs, head)."""
        return next(g for g in self.graphs.values() if g.kind == kind)

    @property
    def image_tokens(self) -> tuple[int, int]:
        """(fewest, most) image tokens one image gives; equal for LLaVA-1.5 builds."""
        limit = self.limits["image_tokens"]
        return int(limit["min"]), int(limit["max"])

    @property
    def keep_counts(self) -> list[int]:
        """Image tokens kept after each prune (fixed-count builds; anyres: ``keep_counts_for``)."""
        if self.anyres:
            raise TransPruneError("an anyres (LLaVA-NeXT) build keeps a share of each image's tokens; ask "
                                  "keep_counts_for(n_image)")
        return [self.scorers[i].keep for i in sorted(self.scorers)]

    def check_image_tokens(self, n_image: int) -> None:
        low, high = self.image_tokens
        if not low <= n_image <= high:
            raise TransPruneError(f"an image of {n_image} image tokens is outside this build's {low}..{high}; "
                                  f"the image or the prompt does not belong to this model")

    def keep_counts_for(self, n_image: int) -> list[int]:
        """Image tokens kept after each prune for an image of ``n_image`` tokens: int(n * ratio)."""
        self.check_image_tokens(n_image)
        return self.keep_counts if not self.anyres else list(self.schedule.keep_counts(n_image))

    def file(self, name: str) -> Path:
        """A processor file of the build (tokenizer.json, ...), checked to lie inside it and to be one
        the manifest lists with a sha256 (so ``Build.open`` verified it)."""
        if name not in manifest_files(self.manifest):
            raise ManifestError(f"{self.directory}: the manifest names {name!r} without listing it with a sha256, "
                                f"so it cannot be verified; re-export the build")
        path = resolve_inside(self.directory, name)
        if not path.is_file():
            raise ManifestError(f"{self.directory}: {name} is missing; re-export the build")
        return path


def _bounded(value, low: int, high: int, what: str) -> int:
    """``value`` as an int if it is an integer within ``low..high``, else a ManifestError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ManifestError(f"{what} is {value!r}, outside {low}..{high}; the manifest is damaged or was not "
                            f"written by transprune-export: re-export the build")
    return value


def _tensor(entry: dict) -> TensorInfo:
    if entry["dtype"] not in TENSOR_TYPES:
        raise ValueError(f"tensor {entry['name']!r} has unknown dtype {entry['dtype']!r}")
    return TensorInfo(entry["name"], TENSOR_TYPES[entry["dtype"]], tuple(entry["axes"]))


def _check_order(directory: Path, kinds: list[str]) -> None:
    """The chain's shape: vision, embed, prefill_inputs, segment (scorer segment)*, head."""
    middle = kinds[3:-1]
    if (kinds[:3] != ["vision", "embed", "prefill_inputs"] or kinds[-1:] != ["head"] or not middle
            or middle[0::2] != ["segment"] * len(middle[0::2]) or middle[1::2] != ["scorer"] * len(middle[1::2])
            or middle[-1] != "segment"):
        raise ManifestError(f"{directory}: graphs run in the order {kinds}, expected vision, embed, prefill_inputs, "
                            f"segment, (scorer, segment)*, head; re-export the build")
