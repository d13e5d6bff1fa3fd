"""TensorRT optimization profiles for every graph of a build, derived from its manifest and schedule.

Every dynamic axis in the manifest has a name (``batch``, ``seq``, ``past``, ``total``, ``alive``);
a profile gives each name a (min, opt, max) range for one phase of generation, and every input's
min/opt/max shape follows from its axes. The ranges come from what the chain really feeds:

- prefill: a segment sees the image tokens still alive before it (all ``n_image`` for the first,
  the previous prune's keep count after) plus the text tokens; its cache is empty (past = 0).
- decode: one new token over a cache of the prompt that segment kept plus the tokens generated.
- scorers run in prefill only; their ``keep`` is a shape-tensor *value* (TopK's K), fixed per scorer.
- LLaVA-NeXT (anyres) builds: an image gives between ``limits.image_tokens.min`` and ``.max``
  tokens, so every image count above is a range (opt: a 4:3 photo), the vision graph's ``tiles``
  axis covers 1..max tiles per image, and a scorer's ``keep`` ranges over int(n * ratio) -- which
  TensorRT's TopK needs below 3840.

Profile 0 is prefill and profile 1 decode wherever a graph runs in both phases; the runtime picks
them by name from the engine metadata, never by position. For TensorRT-RTX the two are merged into
one profile named ``prefill+decode`` (``merge_phases``): measured on 2026-11-23 with TensorRT-RTX
1.7, an engine with two profiles stores the weights twice (LLaVA-1.5-7B's layers 8-9: 1,313 MiB
with two profiles, 775 MiB with one), and its kernels are specialised for the shapes met at run
time by its JIT step anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from transprune.errors import TransPruneError
from transprune.runtime.build import Build, GraphInfo

from transprune.export.kinds import kind_of

# The shapes TensorRT tunes kernels for: one image, a typical question (LLaVA's chat prompt with a
# one-sentence question is 40-60 text tokens), a short answer.
OPT_BATCH = 1
OPT_TEXT_TOKENS = 64
OPT_NEW_TOKENS = 64
# LLaVA-NeXT: the image size (height, width) to tune for, a 4:3 photo (2 x 2 tiles, 2 rows unpadded)
OPT_IMAGE_SIZE = (480, 640)
TOPK_K_LIMIT = 3840  # TensorRT's TopK: "K input must be less than 3840"

PREFILL, DECODE = "prefill", "decode"


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise TransPruneError(f"invalid profile range min={self.min} opt={self.opt} max={self.max}")

    def plus(self, n: "int | Range") -> "Range":
        other = n if isinstance(n, Range) else Range.fixed(n)
        return Range(self.min + other.min, self.opt + other.opt, self.max + other.max)

    def map(self, function) -> "Range":
        """``function`` applied to each bound (it must be monotonic)."""
        return Range(function(self.min), function(self.opt), function(self.max))

    @staticmethod
    def fixed(n: int) -> "Range":
        return Range(n, n, n)


@dataclass(frozen=True)
class InputProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    value: bool = False  # a shape-tensor input: min/opt/max are its values, not its dimensions

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "value": self.value}


@dataclass(frozen=True)
class Profile:
    phase: str
    inputs: tuple[InputProfile, ...]

    def input(self, name: str) -> InputProfile:
        return next(i for i in self.inputs if i.name == name)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "inputs": {i.name: i.to_dict() for i in self.inputs}}


def profile_phases(phase: str) -> list[str]:
    """The phases one profile serves: ``prefill``, ``decode``, or both (``prefill+decode``)."""
    return phase.split("+")


def merge_phases(profiles: list[Profile]) -> Profile:
    """One profile covering every phase of ``profiles``: each dimension (or shape-tensor value) from
    the smallest min to the largest max; opt from the last phase's profile (decode: run once per
    generated token)."""
    if len(profiles) == 1:
        return profiles[0]
    inputs = []
    for first in profiles[0].inputs:
        specs = [p.input(first.name) for p in profiles]
        inputs.append(InputProfile(first.name, tuple(map(min, zip(*(s.min for s in specs)))), specs[-1].opt,
                                   tuple(map(max, zip(*(s.max for s in specs)))), first.value))
    return Profile("+".join(p.phase for p in profiles), tuple(inputs))


@dataclass(frozen=True)
class ShapeLimits:
    """The sizes an engine set serves: at most ``max_batch`` prompts of at most
    ``max_text_tokens`` text tokens each, answered with at most ``max_new_tokens`` tokens."""

    max_batch: int
    max_text_tokens: int
    max_new_tokens: int

    def to_dict(self) -> dict:
        return {"max_batch": self.max_batch, "max_text_tokens": self.max_text_tokens,
                "max_new_tokens": self.max_new_tokens}


def shape_limits(build: Build, *, max_batch: int = 1, max_text_tokens: int | None = None,
                 max_new_tokens: int | None = None) -> ShapeLimits:
    """Checks the requested sizes against the build's exported limits; defaults fill the context.

    Without ``max_new_tokens`` the answer may use every position the prompt leaves free.
    """
    exported_text = int(build.limits["max_text_tokens"])
    total = int(build.limits["max_total_tokens"])
    if not isinstance(max_batch, int) or max_batch < 1:
        raise TransPruneError(f"--max-batch {max_batch!r} must be a positive integer")
    text = exported_text if max_text_tokens is None else max_text_tokens
    if not isinstance(text, int) or not 1 <= text <= exported_text:
        raise TransPruneError(f"--max-text-tokens {text!r} must lie in 1..{exported_text} (the build was exported "
                              f"for at most {exported_text}; re-export with a larger --max-text-tokens for more)")
    image = build.image_tokens[1]
    room = total - image - text
    if room < 1:
        raise TransPruneError(f"{image} image + {text} text tokens leave no room for an answer in "
                              f"{total} positions; lower --max-text-tokens")
    new = room if max_new_tokens is None else max_new_tokens
    if not isinstance(new, int) or not 1 <= new <= room:
        raise TransPruneError(f"--max-new-tokens {new!r} must lie in 1..{room} ({total} positions minus "
                              f"{image} image and {text} text tokens)")
    return ShapeLimits(max_batch, text, new)


def image_token_range(build: Build) -> Range:
    """Image tokens of one image: fixed for LLaVA-1.5; for anyres from the fewest to the most, opt
    at a 4:3 photo."""
    if not build.anyres:
        return Range.fixed(build.n_image)
    from transprune.runtime.inputs import ImageInputs

    low, high = build.image_tokens
    return Range(low, min(max(low, ImageInputs(build).count(OPT_IMAGE_SIZE)), high), high)


def alive_ranges(build: Build) -> list[Range]:
    """Per segment: the image tokens alive when it runs in prefill (then what each scorer keeps)."""
    image = image_token_range(build)
    ranges = [image]
    for index in range(len(build.segments) - 1):
        ranges.append(image.map(lambda n, i=index: build.keep_counts_for(n)[i]))
    return ranges


@dataclass(frozen=True)
class AxisContext:
    """What a graph kind's ``trt_axes`` reads: the build, the ranges every kind shares, and the
    image tokens alive before each segment (``alive_ranges``)."""

    build: Build
    batch: Range
    text: Range  # text tokens of a prompt
    generated: Range  # tokens of an answer
    alive: list[Range]
    PREFILL = PREFILL
    DECODE = DECODE
    one = Range.fixed(1)
    opt_image_size = OPT_IMAGE_SIZE
    topk_k_limit = TOPK_K_LIMIT

    @classmethod
    def of(cls, build: Build, limits: ShapeLimits) -> "AxisContext":
        return cls(build=build, batch=Range(1, min(OPT_BATCH, limits.max_batch), limits.max_batch),
                   text=Range(1, min(OPT_TEXT_TOKENS, limits.max_text_tokens), limits.max_text_tokens),
                   generated=Range(1, min(OPT_NEW_TOKENS, limits.max_new_tokens), limits.max_new_tokens),
                   alive=alive_ranges(build))

    @property
    def prompt(self) -> Range:
        """A whole prompt before any prune: its text and every image token."""
        return self.text.plus(self.alive[0])

    @staticmethod
    def range(low: int, opt: int, high: int) -> Range:
        return Range(low, opt, high)

    @staticmethod
    def fixed(n: int) -> Range:
        return Range.fixed(n)

    def segment(self, graph: GraphInfo):
        return next(s for s in self.build.segments if s.name == graph.name)

    def stage(self, graph: GraphInfo) -> int:
        """A scorer's prune stage: the index of the segment it follows."""
        return next(i for i, s in self.build.scorers.items() if s.name == graph.name)


def graph_profiles(build: Build, graph: GraphInfo, limits: ShapeLimits,
                   context: AxisContext | None = None) -> list[Profile]:
    """One profile per phase the graph runs in, in ``GraphInfo.phases`` order; the axis ranges
    (and shape-tensor values) come from the graph's kind (``export/kinds``)."""
    kind = kind_of(graph.kind)
    context = context or AxisContext.of(build, limits)
    values = kind.trt_values(graph, context)
    profiles = []
    for phase in graph.phases:
        axes = kind.trt_axes(graph, phase, context)
        inputs = []
        for tensor in graph.inputs:
            if tensor.name in values:
                value = values[tensor.name]
                inputs.append(InputProfile(tensor.name, (value.min,), (value.opt,), (value.max,), value=True))
                continue
            try:
                dims = [Range.fixed(a) if isinstance(a, int) else axes[a] for a in tensor.axes]
            except KeyError as exc:
                raise TransPruneError(f"{graph.name}: input {tensor.name!r} has axis {exc.args[0]!r}, which no "
                                      f"{phase} profile rule covers; re-export the build") from None
            inputs.append(InputProfile(tensor.name, tuple(d.min for d in dims), tuple(d.opt for d in dims),
                                       tuple(d.max for d in dims)))
        profiles.append(Profile(phase, tuple(inputs)))
    return profiles


def build_profiles(build: Build, limits: ShapeLimits, *, merge: bool = False) -> dict[str, list[Profile]]:
    """{graph name: its profiles} for every graph of the build, in chain order; with ``merge``, one
    profile per graph covering all its phases (TensorRT-RTX)."""
    context = AxisContext.of(build, limits)
    profiles = {graph.name: graph_profiles(build, graph, limits, context) for graph in build.graphs.values()}
    return {name: [merge_phases(p)] for name, p in profiles.items()} if merge else profiles


def kv_cache_bytes(build: Build, limits: ShapeLimits) -> int:
    """Device bytes of every segment's KV cache at the largest decode profile: one buffer per
    layer's key and value, holding the prompt block and the generated block (runtime/kv_pool.py)."""
    segment_of = {layer: s for s in build.segments for layer in range(s.layers[0], s.layers[1] + 1)}
    layers = sorted(segment_of)
    segment = build.segments[0]
    alive = alive_ranges(build)
    return kv_cache_bytes_for(image_tokens_per_layer=[alive[segment_of[l].index].max for l in layers],
                              kv_heads=segment.kv_heads, head_dim=segment.head_dim,
                              itemsize=4 if build.float_type.__name__ == "float32" else 2, limits=limits)


def kv_cache_bytes_for(*, image_tokens_per_layer: list[int], kv_heads: int, head_dim: int, itemsize: int,
                       limits: ShapeLimits) -> int:
    """One buffer per key and value of every layer, holding that layer's image tokens, the longest
    prompt and the longest answer for ``max_batch`` prompts."""
    per_position = limits.max_batch * kv_heads * head_dim * itemsize
    return sum(2 * per_position * (image + limits.max_text_tokens + limits.max_new_tokens)
               for image in image_tokens_per_layer)
