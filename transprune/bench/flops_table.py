"""Part 1 of the report: prefill FLOPs in the paper's convention (:mod:`transprune.flops`) for
LLaVA-1.5-7B and LLaVA-NeXT-7B under every catalogued schedule, with the paper's published
figures beside them. Always complete, because it is arithmetic."""

from __future__ import annotations

from .schedules import SCHEDULES

FLOPS_MODELS = ("llava-1.5-7b", "llava-next-7b")
FLOPS_TEXT_TOKENS = 64
# The paper's published prefill figures (TFLOPs, image tokens only), as quoted in the project brief
# and docs/DESIGN.md §2.
PUBLISHED = {("llava-1.5-7b", "paper"): (3.82, 1.56, 0.408), ("llava-next-7b", "paper"): (20.83, 8.33, None)}


def flops_rows() -> list[dict]:
    """Every (model, schedule) of the FLOPs table, with the published figures where there are any."""
    from transprune.flops import flops_report
    from transprune.presets import model_preset

    rows = []
    for model in FLOPS_MODELS:
        preset = model_preset(model)
        for name, schedule in SCHEDULES.items():
            report = flops_report(model=preset, schedule=schedule, text_tokens=FLOPS_TEXT_TOKENS)
            published = PUBLISHED.get((model, name))
            rows.append({
                "model": model, "schedule": name, "n_image_tokens": preset.n_image_tokens,
                "kept": [preset.n_image_tokens, *schedule.keep_counts(preset.n_image_tokens)],
                "baseline_tflops": report.baseline_tflops, "pruned_tflops": report.pruned_tflops,
                "ratio": report.ratio, "whole_ratio": report.whole_ratio,
                "whole_with_iga_ratio": report.whole_with_iga_ratio, "text_tokens": FLOPS_TEXT_TOKENS,
                "published": None if published is None else dict(zip(("baseline_tflops", "pruned_tflops", "ratio"),
                                                                      published)),
                "matches_published": None if published is None else matches_published(report, published),
                "report": report.to_dict()})
    return rows


def matches_published(report, published: tuple) -> bool:
    """Whether our figures round to the published ones at the precision they were published with."""
    baseline, pruned, ratio = published
    same = round(report.baseline_tflops, 2) == baseline and round(report.pruned_tflops, 2) == pruned
    return same and (ratio is None or round(report.ratio, 3) == ratio)
