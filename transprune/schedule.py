"""Pruning schedules: which layers accumulate TTV, after which layers to prune, how many to keep.

Pure Python (no torch): the exporter, the runtime, the FLOPs model and the TensorRT profiles all
read the same ``Schedule``.

Layers are numbered 1..L as in the paper. "Prune after layer p" means the output of layer p is
scored and compacted before layer p+1 runs, so p must lie in 1..L-1. Keep ratios are fractions of
the ORIGINAL image-token count and the keep count is ``int(n_image * ratio)`` (paper, docs/DESIGN.md §1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from .errors import ScheduleError

CRITERIA = ("ttv+iga", "ttv", "iga")


@dataclass(frozen=True)
class Schedule:
    """A progressive pruning schedule, validated on construction.

    accumulate: layers whose Token Transition Variation is summed into the TTV score.
    prune:      prune after these layers (strictly increasing).
    ratios:     keep ratio at each prune point, of the original image-token count, strictly
                decreasing in (0, 1].
    criterion:  "ttv+iga" (paper), "ttv" (no attention maps needed) or "iga".
    alpha:      score = alpha * TTV_norm + (1 - alpha) * IGA_norm; 0.5 is the paper's plain sum
                up to scale (and scaling by 0.5 is exact in floating point, so rankings match).
    """

    accumulate: tuple[int, ...] = ()
    prune: tuple[int, ...] = ()
    ratios: tuple[float, ...] = ()
    criterion: str = "ttv+iga"
    alpha: float = 0.5
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "accumulate", tuple(int(x) for x in self.accumulate))
        object.__setattr__(self, "prune", tuple(int(x) for x in self.prune))
        object.__setattr__(self, "ratios", tuple(float(x) for x in self.ratios))
        self._check_intrinsic()

    # -- validation -------------------------------------------------------------------------
    def _check_intrinsic(self) -> None:
        if self.criterion not in CRITERIA:
            raise ScheduleError(
                f"unknown criterion {self.criterion!r}; use one of {', '.join(CRITERIA)}"
            )
        if not (0.0 <= self.alpha <= 1.0) or math.isnan(self.alpha):
            raise ScheduleError(f"alpha {self.alpha} is outside [0, 1]")
        if len(self.prune) != len(self.ratios):
            raise ScheduleError(
                f"{len(self.prune)} prune layers {list(self.prune)} but {len(self.ratios)} keep "
                f"ratios {list(self.ratios)}; give one ratio per prune layer"
            )
        for layer in (*self.prune, *self.accumulate):
            if layer < 1:
                raise ScheduleError(f"layer {layer} is not a layer number; layers are numbered from 1")
        for a, b in zip(self.prune, self.prune[1:]):
            if b <= a:
                raise ScheduleError(
                    f"prune layers must be strictly increasing, got {a} then {b} in {list(self.prune)}"
                )
        if len(set(self.accumulate)) != len(self.accumulate):
            raise ScheduleError(f"accumulation layers {list(self.accumulate)} repeat a layer")
        for r in self.ratios:
            if not (0.0 < r <= 1.0):
                raise ScheduleError(f"keep ratio {r} is outside (0, 1]")
        for a, b in zip(self.ratios, self.ratios[1:]):
            if b >= a:
                raise ScheduleError(
                    f"keep ratios must be strictly decreasing, got {a} then {b} in {list(self.ratios)}"
                )
        if self.prune and self.uses_ttv:
            if not self.accumulate:
                raise ScheduleError(
                    f"criterion {self.criterion!r} needs TTV accumulation layers; pass --accumulate"
                )
            if min(self.accumulate) > self.prune[0]:
                raise ScheduleError(
                    f"the first prune layer {self.prune[0]} comes before the first accumulation "
                    f"layer {min(self.accumulate)}, so its TTV score would be empty; accumulate from "
                    f"layer {self.prune[0]} or earlier"
                )

    def check_model(self, *, num_layers: int, n_image: int) -> None:
        """Checks what depends on the model: layer range and keep counts."""
        for layer in (*self.prune, *self.accumulate):
            if not (1 <= layer <= num_layers - 1):
                raise ScheduleError(
                    f"layer {layer} is outside 1..{num_layers - 1} for a model with {num_layers} "
                    f"decoder layers (pruning after the last layer would prune nothing)"
                )
        for ratio, count in zip(self.ratios, self.keep_counts(n_image)):
            if count < 1:
                raise ScheduleError(
                    f"keep ratio {ratio} keeps int({n_image} * {ratio}) = {count} of {n_image} "
                    f"image tokens; every stage must keep at least 1"
                )

    # -- derived ------------------------------------------------------------------------------
    @property
    def uses_ttv(self) -> bool:
        return self.criterion in ("ttv+iga", "ttv")

    @property
    def uses_iga(self) -> bool:
        return self.criterion in ("ttv+iga", "iga")

    @property
    def is_pruning(self) -> bool:
        return bool(self.prune)

    def keep_counts(self, n_image: int) -> tuple[int, ...]:
        """Image tokens kept after each prune point: int(n_image * ratio), as the paper."""
        return tuple(int(n_image * r) for r in self.ratios)

    def tokens_per_layer(self, *, num_layers: int, n_image: int) -> list[int]:
        """Image tokens each layer 1..L processes in prefill."""
        counts, current = [], n_image
        stages = dict(zip(self.prune, self.keep_counts(n_image)))
        for layer in range(1, num_layers + 1):
            counts.append(current)
            current = stages.get(layer, current)
        return counts

    def segments(self, num_layers: int) -> list[tuple[int, int]]:
        """Decoder segments as (first, last) layer numbers, inclusive: cut after each prune layer."""
        bounds = [0, *self.prune, num_layers]
        return [(a + 1, b) for a, b in zip(bounds, bounds[1:])]

    def describe(self, n_image: int | None = None) -> str:
        if not self.prune:
            return f"{self.name}: no pruning"
        text = (
            f"{self.name}: {self.criterion}, accumulate {_ranges(self.accumulate)}, prune after "
            f"{','.join(map(str, self.prune))}, keep {','.join(f'{r:g}' for r in self.ratios)}"
        )
        if n_image is not None:
            text += " (" + " -> ".join(map(str, (n_image, *self.keep_counts(n_image)))) + " image tokens)"
        return text

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "accumulate": list(self.accumulate),
            "prune": list(self.prune),
            "ratios": list(self.ratios),
            "criterion": self.criterion,
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        return cls(
            accumulate=tuple(data["accumulate"]),
            prune=tuple(data["prune"]),
            ratios=tuple(data["ratios"]),
            criterion=data["criterion"],
            alpha=float(data.get("alpha", 0.5)),
            name=data.get("name", "custom"),
        )


_PAPER_LAYERS = dict(accumulate=tuple(range(7, 13)), prune=(7, 9, 12), ratios=(0.875, 0.625, 0.125))

PRESETS: dict[str, Schedule] = {
    "paper": Schedule(**_PAPER_LAYERS, criterion="ttv+iga", name="paper"),
    "ttv-only": Schedule(**_PAPER_LAYERS, criterion="ttv", name="ttv-only"),
    "iga-only": Schedule(**_PAPER_LAYERS, criterion="iga", name="iga-only"),
    "none": Schedule(name="none"),
}


def preset(name: str) -> Schedule:
    try:
        return PRESETS[name]
    except KeyError:
        raise ScheduleError(
            f"unknown schedule {name!r}; use one of {', '.join(PRESETS)} or give --prune/--ratios"
        ) from None


def parse_layers(text: str, what: str = "layers") -> tuple[int, ...]:
    """'7,9,12' or '7-12' or '7-9,12' -> (7, 9, 12) / (7, ..., 12). No eval."""
    text = text.strip()
    if not text:
        return ()
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ScheduleError(f"{what}: range {part!r} runs backwards; write {hi}-{lo}")
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ScheduleError(
                f"{what}: {part!r} is not a layer number or range; write e.g. 7,9,12 or 7-12"
            )
    return tuple(out)


def parse_ratios(text: str) -> tuple[float, ...]:
    """'0.875,0.625,0.125' -> floats. No eval."""
    text = text.strip()
    if not text:
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ScheduleError(f"ratios: {part!r} is not a number; write e.g. 0.875,0.625,0.125") from None
        if not math.isfinite(value):
            raise ScheduleError(f"ratios: {part!r} is not a finite number")
        out.append(value)
    return tuple(out)


def resolve_schedule(
    *,
    schedule: str = "paper",
    accumulate: str | None = None,
    prune: str | None = None,
    ratios: str | None = None,
    criterion: str | None = None,
    alpha: float | None = None,
) -> Schedule:
    """A preset with command-line overrides applied (the strings as typed by the user).

    When --prune is given without --accumulate, TTV is accumulated from the first to the last
    prune layer, as the paper does for its default and its Table 9 layer shifts.
    """
    base = preset(schedule)
    changes: dict = {}
    if prune is not None:
        changes["prune"] = parse_layers(prune, "--prune")
        if accumulate is None and changes["prune"]:
            changes["accumulate"] = tuple(range(changes["prune"][0], changes["prune"][-1] + 1))
    if accumulate is not None:
        changes["accumulate"] = parse_layers(accumulate, "--accumulate")
    if ratios is not None:
        changes["ratios"] = parse_ratios(ratios)
    if criterion is not None:
        changes["criterion"] = criterion
    if alpha is not None:
        changes["alpha"] = alpha
    if not changes:
        return base
    if base.name == "none" and "prune" in changes and "criterion" not in changes:
        changes["criterion"] = "ttv+iga"
    return replace(base, **changes, name="custom")


def add_schedule_arguments(parser) -> None:
    """The schedule flags shared by every CLI (export, flops, reference)."""
    group = parser.add_argument_group("pruning schedule")
    group.add_argument("--schedule", default="paper", choices=list(PRESETS),
                       help="preset schedule (default: paper = prune after 7,9,12 keeping .875,.625,.125)")
    group.add_argument("--accumulate", help="TTV accumulation layers, e.g. 7-12 or 7,8,9")
    group.add_argument("--prune", help="prune after these layers, e.g. 7,9,12")
    group.add_argument("--ratios", help="keep ratios of the original image tokens, e.g. 0.875,0.625,0.125")
    group.add_argument("--criterion", choices=CRITERIA, help="score: ttv+iga (paper), ttv or iga")
    group.add_argument("--alpha", type=float, help="score = alpha*TTV + (1-alpha)*IGA (default 0.5)")


def schedule_from_args(args) -> Schedule:
    return resolve_schedule(
        schedule=args.schedule,
        accumulate=args.accumulate,
        prune=args.prune,
        ratios=args.ratios,
        criterion=args.criterion,
        alpha=args.alpha,
    )


def _ranges(layers: tuple[int, ...]) -> str:
    if not layers:
        return "-"
    if list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))
