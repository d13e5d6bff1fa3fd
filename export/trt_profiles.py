"""TensorRT optimization profiles for every graph of a build, derived from its manifest and schedule.

Every dynamic axis in the manifest has a name (``batch``, ``seq``, ``past``, ``total``, ``alive``);
a profile gives each name a (min, opt, max) range for one phase of generation, and every input's
min/opt/max shape follows from its axes. The ranges come from what the chain really feeds:

- prefill: a segment sees the image tokens still alive before it (all ``n_image`` for the first,
  the previous prune's keep count after) plus the text tokens; its cache is empty (past = 0).
- decode: one new token over a cache of the prompt that segment kept plus the tokens generated.
- scorers run in prefill only; their ``keep`` is a shape-tensor *value* (TopK's K), fixed per scorer.

Profile 0 is prefill and profile 1 decode wherever a graph runs in both phases; the runtime picks
them by name from the engine metadata, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass

from transprune.errors import TransPruneError
from transprune.runtime.build import Build, GraphInfo

# The shapes TensorRT tunes kernels for: one image, a typical question (LLaVA's chat prompt with a
# one-sentence question is 40-60 text tokens), a short answer.
OPT_BATCH = 1
OPT_TEXT_TOKENS = 64
OPT_NEW_TOKENS = 64

PREFILL, DECODE = "prefill", "decode"


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise TransPruneError(f"invalid profile range min={self.min} opt={self.opt} max={self.max}")

    def plus(self, n: int) -> "Range":
        return Range(self.min + n, self.opt + n, self.max + n)

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
    room = total - build.n_image - text
    if room < 1:
        raise TransPruneError(f"{build.n_image} image + {text} text tokens leave no room for an answer in "
                              f"{total} positions; lower --max-text-tokens")
    new = room if max_new_tokens is None else max_new_tokens
    if not isinstance(new, int) or not 1 <= new <= room:
        raise TransPruneError(f"--max-new-tokens {new!r} must lie in 1..{room} ({total} positions minus "
                              f"{build.n_image} image and {text} text tokens)")
    return ShapeLimits(max_batch, text, new)


def _axis_ranges(build: Build, graph: GraphInfo, phase: str, limits: ShapeLimits) -> dict[str, Range]:
    """{axis name: range} for ``graph`` in ``phase``."""
    batch = Range(1, min(OPT_BATCH, limits.max_batch), limits.max_batch)
    text = Range(1, min(OPT_TEXT_TOKENS, limits.max_text_tokens), limits.max_text_tokens)
    generated = Range(1, min(OPT_NEW_TOKENS, limits.max_new_tokens), limits.max_new_tokens)
    one = Range.fixed(1)
    alive_before = {s.index: build.n_image - s.position_shift for s in build.segments}
    if graph.kind in ("vision",):
        return {"batch": batch}
    if graph.kind in ("embed", "prefill_inputs"):
        return {"batch": batch, "seq": text.plus(build.n_image) if phase == PREFILL else one}
    if graph.kind == "head":
        last = build.segments[-1]
        return {"batch": batch, "seq": text.plus(alive_before[last.index]) if phase == PREFILL else one}
    if graph.kind == "segment":
        image = alive_before[_segment(build, graph).index]
        if phase == PREFILL:
            seq = text.plus(image)
            return {"batch": batch, "seq": seq, "past": Range.fixed(0), "total": seq}
        # the cache holds the prompt and every token generated before this one; opt: halfway
        # through a typical answer
        past = Range(image + text.min, image + text.opt + generated.opt // 2,
                     image + text.max + generated.max - 1)
        return {"batch": batch, "seq": one, "past": past, "total": past.plus(1)}
    if graph.kind == "scorer":
        image = alive_before[next(s for s in build.segments if s.layers[1] == graph.attrs["after_layer"]).index]
        return {"batch": batch, "seq": text.plus(image), "alive": Range.fixed(image)}
    raise TransPruneError(f"graph {graph.name!r} has kind {graph.kind!r}, which has no TensorRT profile")


def _segment(build: Build, graph: GraphInfo):
    return next(s for s in build.segments if s.name == graph.name)


def graph_profiles(build: Build, graph: GraphInfo, limits: ShapeLimits) -> list[Profile]:
    """One profile per phase the graph runs in, in ``GraphInfo.phases`` order."""
    profiles = []
    for phase in graph.phases:
        axes = _axis_ranges(build, graph, phase, limits)
        inputs = []
        for tensor in graph.inputs:
            if graph.kind == "scorer" and tensor.name == "keep":
                keep = (int(graph.attrs["keep"]),)
                inputs.append(InputProfile(tensor.name, keep, keep, keep, value=True))
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


def build_profiles(build: Build, limits: ShapeLimits) -> dict[str, list[Profile]]:
    """{graph name: its profiles} for every graph of the build, in chain order."""
    return {graph.name: graph_profiles(build, graph, limits) for graph in build.graphs.values()}


def kv_cache_bytes(build: Build, limits: ShapeLimits) -> int:
    """Device bytes of every segment's KV cache at the largest decode profile, two buffers each
    (the runtime reads ``past`` from one and writes ``present`` into the other)."""
    segment_of = {layer: s for s in build.segments for layer in range(s.layers[0], s.layers[1] + 1)}
    layers = sorted(segment_of)
    segment = build.segments[0]
    return kv_cache_bytes_for(image_tokens_per_layer=[build.n_image - segment_of[l].position_shift for l in layers],
                              kv_heads=segment.kv_heads, head_dim=segment.head_dim,
                              itemsize=4 if build.float_type.__name__ == "float32" else 2, limits=limits)


def kv_cache_bytes_for(*, image_tokens_per_layer: list[int], kv_heads: int, head_dim: int, itemsize: int,
                       limits: ShapeLimits) -> int:
    """Two buffers per key and value of every layer, each holding that layer's image tokens, the
    longest prompt and the longest answer for ``max_batch`` prompts."""
    per_position = limits.max_batch * kv_heads * head_dim * itemsize
    return sum(2 * 2 * per_position * (image + limits.max_text_tokens + limits.max_new_tokens)
               for image in image_tokens_per_layer)
