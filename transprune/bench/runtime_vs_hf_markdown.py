"""The runtime benchmark's markdown table (what ``scripts/bench_runtime.py`` prints for docs/performance.md),
and the met / not met verdict of a target."""

from __future__ import annotations

from .output import fmt
from .runtime_vs_hf import DECODE_RATIO, KINDS, LABELS, PREFILL_TOLERANCE, SCORER_SLACK, TTFT_SPEEDUP


def met(target: dict) -> str:
    return "n/a" if target["met"] is None else ("met" if target["met"] else "NOT met")


def _decode_cell(medians: dict) -> str:
    if "decode_ms_per_token" in medians:
        return fmt(medians["decode_ms_per_token"])
    estimate = medians.get("decode_ms_per_token_est")  # HF: (total - TTFT) / (N - 1), noise can make it <= 0
    return f"{fmt(estimate)} (est.)" if estimate is not None and estimate > 0 else "-"


def _weights_note(config: dict) -> str:
    weights = config.get("weights") or {}
    if weights.get("format", "float") == "float":
        return ""
    return (f" Runtime builds with {weights['format']} weights (blocks of {weights.get('block_size')}); "
            f"transformers in fp32.")


def markdown(report: dict) -> str:
    config, medians, ratios, goal = report["config"], report["medians"], report["ratios"], report["targets"]
    kinds = [k for k in KINDS if k in medians]
    n = config["new_tokens"]
    rss = report.get("rss") or {}
    header = ["", *(LABELS[k] for k in kinds), "ratio", "target"]
    rows = []
    flops = report["flops"]["whole_with_iga_ratio"]
    rows.append(["prefill (ms)", *(fmt(medians[k].get("prefill_ms")) for k in kinds),
                 f"pruned/unpruned {fmt(ratios['prefill_pruned_over_unpruned'], 3)}; FLOPs {flops:.3f}; "
                 f"measured/ideal {fmt(goal['prefill_matches_flops']['value'], 3)}",
                 f"within {PREFILL_TOLERANCE:.0%} of FLOPs: {met(goal['prefill_matches_flops'])}"])
    rows.append(["prefill, decoder segments + scorers only (ms)",
                 *(fmt(medians[k].get("decoder_prefill_ms")) for k in kinds),
                 f"pruned/unpruned {fmt(ratios['decoder_prefill_pruned_over_unpruned'], 3)}", ""])
    scorers = report.get("scorers") or {}
    if scorers.get("time_share") is not None:
        rows.append(["scorers' share of prefill", fmt(scorers["time_share"], 3), *("-" for _ in kinds[1:]),
                     f"their FLOPs share {fmt(scorers['flops_share'], 3)}",
                     f"<= FLOPs share + {SCORER_SLACK:g}: {met(goal['scorers_within_flops_share'])}"])
    rows.append(["decode (ms/token)", *(_decode_cell(medians[k]) for k in kinds),
                 f"pruned/unpruned {fmt(ratios['decode_pruned_over_unpruned'], 3)}",
                 f"<= {DECODE_RATIO:g}x unpruned: {met(goal['decode_cheaper'])}"])
    batched = report.get("batched_decode")
    if batched:
        per_step = batched["median_ms_per_step"]
        rows.append([f"decode at batch {batched['batch']} (ms/step)",
                     *(fmt(per_step[k]) if k in per_step else "-" for k in kinds),
                     f"pruned/unpruned {fmt(batched['pruned_over_unpruned'], 3)}",
                     f"<= {DECODE_RATIO:g}x unpruned: {met(goal['decode_cheaper_batched'])}"])
    hf_ttft = f"; HF/pruned {fmt(ratios.get('ttft_hf_over_pruned'), 2)}x" if "hf" in kinds else ""
    rows.append(["time to first token (ms)", *(fmt(medians[k]["ttft_ms"]) for k in kinds),
                 f"unpruned/pruned {fmt(ratios['ttft_unpruned_over_pruned'], 2)}x{hf_ttft}",
                 f">= {TTFT_SPEEDUP:g}x faster than HF: {met(goal['ttft_vs_hf'])}"])
    hf_total = f"; HF/pruned {fmt(ratios.get('total_hf_over_pruned'), 2)}x" if "hf" in kinds else ""
    rows.append([f"total, {n} new tokens (ms)", *(fmt(medians[k]["total_ms"]) for k in kinds),
                 f"unpruned/pruned {fmt(ratios['total_unpruned_over_pruned'], 2)}x{hf_total}", ""])
    if rss:
        rows.append(["peak RSS (MiB)", *(fmt(rss[k]["peak_rss_bytes"] / 2**20, 0) if k in rss else "-"
                                         for k in kinds),
                     f"pruned/unpruned {fmt(goal['rss_not_higher']['value'], 3)}",
                     f"pruned <= unpruned: {met(goal['rss_not_higher'])}"])
    load = report.get("load")
    if load:
        rows.append(["load, fresh process (s)", *(fmt(load["median_s"].get(k), 2) if k in load["median_s"] else "-"
                                                  for k in kinds),
                     f"pruned/unpruned {fmt(load['pruned_over_unpruned'], 3)}",
                     f"pruned <= unpruned: {met(goal['load_not_slower'])}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    machine = config["machine"]
    lines.append("")
    lines.append(f"Model `{config['model']}`, prompt of {config['text_tokens']} text + {config['image_tokens']} image "
                 f"tokens, image tokens kept {' -> '.join(map(str, config['kept_image_tokens']['pruned']))}; "
                 f"{config['threads']} thread{'s' if config['threads'] != 1 else ''} on {machine['cpu_count']} CPUs ({machine['processor'] or machine['machine']}); "
                 f"median of {config['repeats']} interleaved repetitions after a warm-up; onnxruntime "
                 f"{machine['versions'].get('onnxruntime')}, torch {machine['versions'].get('torch')}. "
                 f"Time to first token = generate(max_new_tokens=1).{_weights_note(config)}")
    return "\n".join(lines)
