"""The FLOPs model (docs/DESIGN.md §2): a hand-checked toy model, then the paper's published figures."""

import dataclasses

import pytest

from transprune.errors import ScheduleError, TransPruneError
from transprune.flops import flops_report, layer_flops
from transprune.presets import PRESETS as MODELS
from transprune.presets import ModelPreset, TextSpec, VisionSpec
from transprune.schedule import PRESETS as SCHEDULES
from transprune.schedule import Schedule

# d=4, m=8, 3 layers, 2 heads of width 2 sharing 1 KV head (kv width 2), 4 image tokens.
TOY = ModelPreset(
    name="toy", architecture="llava", n_image_tokens=4,
    text=TextSpec(hidden_size=4, num_layers=3, num_heads=2, num_kv_heads=1,
                  intermediate_size=8, vocab_size=10),
    vision=VisionSpec(image_size=4, patch_size=2, hidden_size=4, num_layers=1, num_heads=1,
                      intermediate_size=8),
)
# Prune after layer 1 to int(4*0.5)=2 and after layer 2 to int(4*0.25)=1: layers see 4, 2, 1.
TOY_SCHEDULE = Schedule(accumulate=(1,), prune=(1, 2), ratios=(0.5, 0.25), criterion="ttv+iga")


def test_layer_formula_by_hand():
    # 4*n*d^2 + 2*n^2*d + 3*n*d*m with n=4, d=4, m=8: 4*4*16 + 2*16*4 + 3*4*4*8 = 256+128+384
    assert layer_flops(4, 4, 8) == 768


def test_toy_model_by_hand():
    r = flops_report(model=TOY, schedule=TOY_SCHEDULE, text_tokens=3)
    assert r.per_layer_image_tokens == (4, 2, 1)
    # With d=4, m=8 one layer costs 64n + 8n^2 + 96n = 160n + 8n^2:
    # f(4) = 640+128 = 768, f(2) = 320+32 = 352, f(1) = 160+8 = 168.
    assert r.baseline_tflops * 1e12 == pytest.approx(3 * 768)          # 2304
    assert r.pruned_tflops * 1e12 == pytest.approx(768 + 352 + 168)    # 1288
    assert r.ratio == pytest.approx(1288 / 2304)
    # Whole prompt, 3 text tokens: n = 7, 5, 4 -> f(7) = 1120+392 = 1512, f(5) = 800+200 = 1000,
    # f(4) = 768.
    assert r.whole_baseline_tflops * 1e12 == pytest.approx(3 * 1512)   # 4536
    assert r.whole_pruned_tflops * 1e12 == pytest.approx(1512 + 1000 + 768)  # 3280
    # IGA per prune point: n_text*d*d + n*d*kv_width + n_text*n*d, kv_width = 1*2 = 2.
    # After layer 1: n = 4+3 = 7 -> 3*16 + 7*4*2 + 3*7*4 = 48+56+84 = 188.
    # After layer 2: n = 2+3 = 5 -> 48 + 5*4*2 + 3*5*4 = 48+40+60 = 148.
    assert r.iga_tflops * 1e12 == pytest.approx(188 + 148)              # 336
    d = r.to_dict()
    assert d["whole_prompt_with_iga"]["pruned_tflops"] * 1e12 == pytest.approx(3280 + 336)
    assert d["whole_prompt_with_iga"]["ratio"] == pytest.approx(3616 / 4536)


def report(model="llava-1.5-7b", schedule="paper", **kw):
    return flops_report(model=MODELS[model], schedule=SCHEDULES[schedule], **kw)


def test_paper_llava15_7b():
    r = report()
    assert round(r.baseline_tflops, 2) == 3.82
    assert round(r.pruned_tflops, 2) == 1.56
    assert round(r.ratio, 3) == 0.408
    assert r.per_layer_image_tokens == (576,) * 7 + (504,) * 2 + (360,) * 3 + (72,) * 20
    assert r.whole_ratio == pytest.approx(0.466, abs=5e-4)
    assert r.text_tokens == 64


def test_paper_llava_next_7b():
    r = report("llava-next-7b")
    assert (round(r.baseline_tflops, 2), round(r.pruned_tflops, 2)) == (20.83, 8.33)


def test_no_pruning_is_exactly_baseline():
    r = report(schedule="none")
    assert r.ratio == 1.0 and r.whole_ratio == 1.0 and r.whole_with_iga_ratio == 1.0
    assert r.iga_tflops == 0


def test_ttv_only_has_no_iga_cost():
    ttv, paper = report(schedule="ttv-only"), report()
    assert ttv.iga_tflops == 0
    assert ttv.pruned_tflops == paper.pruned_tflops
    assert ttv.whole_with_iga_tflops == ttv.whole_pruned_tflops
    assert report(schedule="iga-only").iga_tflops == paper.iga_tflops


def test_iga_overhead_is_small():
    r = report()
    share = r.iga_tflops / r.whole_baseline_tflops
    assert 0.005 < share < 0.03
    assert r.whole_with_iga_ratio > r.whole_ratio


def test_13b_runs():
    r = report("llava-1.5-13b")
    assert 0 < r.pruned_tflops < r.baseline_tflops
    assert len(r.per_layer_image_tokens) == 40


def test_more_text_tokens_raise_the_whole_prompt_ratio():
    # Text is never pruned, so the saving shrinks as the prompt grows.
    assert report(text_tokens=0).whole_ratio == pytest.approx(report().ratio)
    assert report(text_tokens=512).whole_ratio > report(text_tokens=64).whole_ratio


def test_to_dict_keys_and_frozen():
    r = report()
    d = r.to_dict()
    assert {"model", "schedule", "per_layer_image_tokens", "baseline_tflops", "pruned_tflops",
            "ratio", "whole_prompt", "iga_tflops", "whole_prompt_with_iga"} <= d.keys()
    assert set(d["whole_prompt"]) == {"text_tokens", "baseline_tflops", "pruned_tflops", "ratio"}
    assert d["schedule"] == SCHEDULES["paper"].to_dict()
    assert d["model"]["name"] == "llava-1.5-7b"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.baseline_tflops = 0.0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "64"])
def test_bad_text_tokens(bad):
    with pytest.raises(TransPruneError, match=repr(bad).replace(".", r"\.")):
        report(text_tokens=bad)


def test_schedule_checked_against_model():
    # The toy model has 3 layers: pruning after layer 7 is out of range.
    with pytest.raises(ScheduleError, match="outside 1..2"):
        flops_report(model=TOY, schedule=SCHEDULES["paper"])
