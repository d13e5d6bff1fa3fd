"""transprune.bench.schedules: the report's catalogue, and the default measured schedules fitting
both runnable models."""

from __future__ import annotations

import pytest

from transprune.bench.schedules import MEASURED, QUICK, SCHEDULES, SWEEP, shift_schedule, sweep_schedule
from transprune.presets import model_preset
from transprune.schedule import preset


def test_catalogue_order_and_names():
    assert list(SCHEDULES) == ["paper", "ttv-only", "iga-only", "shift-5-7-10", "shift-6-8-11", "shift-8-10-13",
                               "shift-9-11-14", "sweep-0.875-0.625-0.25", "sweep-0.875-0.75-0.5", "none"]
    assert SCHEDULES["paper"] == preset("paper") and SCHEDULES["none"] == preset("none")
    assert set(MEASURED) <= set(SCHEDULES) and set(QUICK) <= set(MEASURED) and set(SWEEP) <= set(SCHEDULES)


def test_shift_and_sweep_keep_the_papers_other_choices():
    shift = shift_schedule((5, 7, 10))
    assert shift.prune == (5, 7, 10) and tuple(shift.ratios) == tuple(preset("paper").ratios)
    assert list(shift.accumulate) == list(range(5, 11))
    sweep = sweep_schedule((0.875, 0.75, 0.5))
    assert sweep.prune == preset("paper").prune and tuple(sweep.ratios) == (0.875, 0.75, 0.5)


@pytest.mark.parametrize("model", ["tiny", "bench"])
def test_default_measured_schedules_fit_both_runnable_models(model):
    facts = model_preset(model)
    for name in MEASURED:
        SCHEDULES[name].check_model(num_layers=facts.text.num_layers, n_image=facts.n_image_tokens)
