"""The schedule catalogue of ``scripts/report.py``: the paper's presets, its Table 9 layer shifts
and a keep-ratio sweep, by name, in table order; and which of them are measured by default.

The FLOPs table covers all of them (it is arithmetic); the measured part times a subset, since
each measured schedule is one more export.
"""

from __future__ import annotations

from transprune.schedule import PRESETS, Schedule

PAPER_PRUNE = (7, 9, 12)
PAPER_RATIOS = (0.875, 0.625, 0.125)
TABLE9_SHIFTS = ((5, 7, 10), (6, 8, 11), (8, 10, 13), (9, 11, 14))
SWEEP_RATIOS = ((0.875, 0.625, 0.25), (0.875, 0.75, 0.5))


def shift_schedule(prune: tuple[int, ...]) -> Schedule:
    """A Table 9 layer shift: the paper's ratios, TTV accumulated from the first to the last prune layer."""
    return Schedule(accumulate=range(prune[0], prune[-1] + 1), prune=prune, ratios=PAPER_RATIOS,
                    criterion="ttv+iga", name="shift-" + "-".join(map(str, prune)))


def sweep_schedule(ratios: tuple[float, ...]) -> Schedule:
    """The paper's layers and criterion with other keep ratios."""
    return Schedule(accumulate=range(PAPER_PRUNE[0], PAPER_PRUNE[-1] + 1), prune=PAPER_PRUNE, ratios=ratios,
                    criterion="ttv+iga", name="sweep-" + "-".join(f"{r:g}" for r in ratios))


def catalog() -> dict[str, Schedule]:
    """Every schedule this report knows, by name, in table order."""
    schedules = {name: PRESETS[name] for name in ("paper", "ttv-only", "iga-only")}
    schedules.update((s.name, s) for s in map(shift_schedule, TABLE9_SHIFTS))
    schedules.update((s.name, s) for s in map(sweep_schedule, SWEEP_RATIOS))
    schedules["none"] = PRESETS["none"]
    return schedules


SCHEDULES = catalog()
# shift-9-11-14 prunes after layer 14, which tiny (14 layers) does not allow, so the default
# measured shifts are two that fit both runnable models.
MEASURED = ("none", "paper", "ttv-only", "iga-only", "shift-5-7-10", "shift-8-10-13",
            "sweep-0.875-0.625-0.25", "sweep-0.875-0.75-0.5")
QUICK = ("none", "paper")
SWEEP = ("paper", *(sweep_schedule(r).name for r in SWEEP_RATIOS))
