import pytest

from transprune.errors import ScheduleError
from transprune.schedule import PRESETS, Schedule, parse_layers, parse_ratios, preset, resolve_schedule


def test_paper_counts_576_504_360_72():
    paper = preset("paper")
    assert paper.keep_counts(576) == (504, 360, 72)
    per_layer = paper.tokens_per_layer(num_layers=32, n_image=576)
    assert per_layer[:7] == [576] * 7 and per_layer[7:9] == [504] * 2
    assert per_layer[9:12] == [360] * 3 and per_layer[12:] == [72] * 20


def test_paper_preset_layers():
    paper = preset("paper")
    assert paper.accumulate == (7, 8, 9, 10, 11, 12)
    assert paper.prune == (7, 9, 12) and paper.criterion == "ttv+iga"
    assert paper.segments(32) == [(1, 7), (8, 9), (10, 12), (13, 32)]
    assert preset("none").segments(32) == [(1, 32)] and not preset("none").is_pruning
    assert preset("ttv-only").uses_ttv and not preset("ttv-only").uses_iga
    assert preset("iga-only").uses_iga and not preset("iga-only").uses_ttv


def test_keep_count_is_int_of_product():
    # int() truncation as in the paper, including float products just below an integer
    s = Schedule(accumulate=(1,), prune=(1,), ratios=(0.29,))
    assert s.keep_counts(100) == (int(100 * 0.29),) == (28,)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prune=(9, 7, 12), ratios=(0.8, 0.6, 0.1), accumulate=(7,)), "strictly increasing, got 9 then 7"),
        (dict(prune=(7, 7), ratios=(0.8, 0.6), accumulate=(7,)), "strictly increasing, got 7 then 7"),
        (dict(prune=(7, 9), ratios=(0.5, 0.7), accumulate=(7,)), "strictly decreasing, got 0.5 then 0.7"),
        (dict(prune=(7,), ratios=(1.5,), accumulate=(7,)), "keep ratio 1.5 is outside (0, 1]"),
        (dict(prune=(7,), ratios=(0.0,), accumulate=(7,)), "keep ratio 0.0 is outside (0, 1]"),
        (dict(prune=(7, 9), ratios=(0.5,), accumulate=(7,)), "2 prune layers [7, 9] but 1 keep ratios"),
        (dict(prune=(0,), ratios=(0.5,), accumulate=(0,)), "layer 0 is not a layer number"),
        (dict(prune=(7,), ratios=(0.5,), accumulate=(8, 9)), "first prune layer 7 comes before the first accumulation layer 8"),
        (dict(prune=(7,), ratios=(0.5,)), "needs TTV accumulation layers"),
        (dict(prune=(7,), ratios=(0.5,), accumulate=(7,), criterion="fastv"), "unknown criterion 'fastv'"),
        (dict(prune=(7,), ratios=(0.5,), accumulate=(7, 7)), "repeat a layer"),
        (dict(prune=(7,), ratios=(0.5,), accumulate=(7,), alpha=1.5), "alpha 1.5 is outside [0, 1]"),
    ],
)
def test_bad_schedules_rejected_with_message(kwargs, message):
    with pytest.raises(ScheduleError) as err:
        Schedule(**kwargs)
    assert message in str(err.value)


def test_model_dependent_checks():
    paper = preset("paper")
    paper.check_model(num_layers=14, n_image=576)
    with pytest.raises(ScheduleError, match=r"layer 12 is outside 1..11 for a model with 12"):
        paper.check_model(num_layers=12, n_image=576)
    with pytest.raises(ScheduleError, match=r"int\(4 \* 0.125\) = 0 of 4"):
        paper.check_model(num_layers=32, n_image=4)
    with pytest.raises(ScheduleError, match="outside 1..31"):
        Schedule(accumulate=(32,), prune=(32,), ratios=(0.5,)).check_model(num_layers=32, n_image=576)


def test_parse_lists_without_eval():
    assert parse_layers("7,9,12") == (7, 9, 12)
    assert parse_layers("7-12") == (7, 8, 9, 10, 11, 12)
    assert parse_layers(" 5-6, 9 ") == (5, 6, 9)
    assert parse_ratios("0.875,0.625,0.125") == (0.875, 0.625, 0.125)
    for bad in ["__import__('os')", "7;9", "7.5", "[7,9]"]:
        with pytest.raises(ScheduleError, match="not a layer number or range"):
            parse_layers(bad)
    with pytest.raises(ScheduleError, match="runs backwards"):
        parse_layers("12-7")
    with pytest.raises(ScheduleError, match="'x' is not a number"):
        parse_ratios("0.5,x")
    with pytest.raises(ScheduleError, match="not a finite number"):
        parse_ratios("nan")


def test_resolve_overrides_and_table9_shift():
    shifted = resolve_schedule(schedule="paper", prune="5,7,10")
    assert shifted.prune == (5, 7, 10) and shifted.accumulate == tuple(range(5, 11))
    assert shifted.ratios == PRESETS["paper"].ratios and shifted.criterion == "ttv+iga"
    custom = resolve_schedule(schedule="none", prune="3,6", ratios="0.5,0.25")
    assert custom.is_pruning and custom.criterion == "ttv+iga" and custom.accumulate == (3, 4, 5, 6)
    assert resolve_schedule(schedule="ttv-only", accumulate="2-8").accumulate == tuple(range(2, 9))
    with pytest.raises(ScheduleError, match="unknown schedule 'best'"):
        resolve_schedule(schedule="best")
    with pytest.raises(ScheduleError, match="strictly decreasing"):
        resolve_schedule(ratios="0.5,0.7,0.1")


def test_dict_round_trip():
    for s in PRESETS.values():
        assert Schedule.from_dict(s.to_dict()) == s
