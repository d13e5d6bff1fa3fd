"""The graph kinds of a build: one module per kind, one registry, and the chain's composition.

    pixels -> [vision] -> image features --+     (LLaVA-NeXT: tiles + pack index -> [vision])
    ids ----> [embed] -> embeddings -------+-> [prefill_inputs] -> hidden, positions, image start
                                                     |
         [segment 0] -(ttv)-> [scorer 0] -> [segment 1] -> ... -> [segment K] -> [head] -> logits

Each kind module holds everything about its kind (see ``base.GraphKind``): its spec, the factory
of the torch module traced to ONNX (the module classes themselves are in ``export/graphs.py``),
example inputs, validation cases, TensorRT axis ranges and the reference computation it must
equal. The exporter, the validation and the TensorRT planner look a kind up here by the name in
the spec or manifest; none of them branches on graph kinds or tensor names. Adding a kind is a
module and one ``register`` call (tests/export/kinds/test_registry.py adds one).

Nothing here imports torch at module level: the TensorRT planner uses the registry on a Jetson
with neither torch nor onnx installed.
"""

from __future__ import annotations

from transprune.errors import TransPruneError
from transprune.family import ModelFacts
from transprune.schedule import Schedule

from ..specs import GraphSpec
from . import embed, head, prefill_inputs, scorer, segment, vision
from .base import GraphKind

KINDS: dict[str, GraphKind] = {}


def register(kind: GraphKind) -> GraphKind:
    """Adds ``kind`` to the registry (a name may be registered once)."""
    if kind.name in KINDS:
        raise ValueError(f"graph kind {kind.name!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    KINDS.pop(name, None)


def kind_of(name: str) -> GraphKind:
    """The registered kind called ``name`` (a spec's or manifest graph's ``kind``)."""
    try:
        return KINDS[name]
    except KeyError:
        raise TransPruneError(f"graph kind {name!r} is unknown to this exporter (known: {', '.join(KINDS)}); "
                              f"re-export the build with this version") from None


for _kind in (vision.Vision(), embed.Embed(), prefill_inputs.PrefillInputs(), segment.Segment(), scorer.Scorer(),
              head.Head()):
    register(_kind)


def graph_specs(facts: ModelFacts, schedule: Schedule) -> list[GraphSpec]:
    """Every graph of a build, in the order the chain runs them: vision, embed, prefill_inputs,
    then the segments with a scorer between each two, then the head.

    Anyres (LLaVA-NeXT) builds have a dynamic ``image`` axis instead of a fixed image-token count:
    their scorers record the keep ratio (the chain keeps int(n_image * ratio) of each image) and
    their segments no fixed position shift (the chain derives it per prompt).
    """
    specs = [vision.spec(facts), embed.spec(facts), prefill_inputs.spec(facts)]
    count = len(schedule.segments(facts.num_layers))
    for index in range(count):
        specs.append(segment.spec(facts, schedule, index))
        if index < count - 1:
            specs.append(scorer.spec(facts, schedule, index))
    specs.append(head.spec(facts))
    return specs
