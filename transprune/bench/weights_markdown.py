"""The weights benchmark's markdown table (what ``scripts/bench_weights.py`` prints for docs/performance.md)."""

from __future__ import annotations

from .output import fmt
from .weights import REFERENCE

HEADER = ["weights", "build (MiB)", "load (ms)", "prefill (ms)", "decode (ms/token)", "decode vs fp32",
          "peak RSS (MiB)", "tokens = fp32", "first token", "kept overlap per stage", "max \\|Δlogit\\| step 1"]


def _ratio(report: dict, name: str, base: str, key: str) -> str:
    value = (report["ratios"].get(name) or {}).get(f"over_{base}", {}).get(key)
    return "1" if name == base else fmt(value, 2, "x")


def markdown(report: dict) -> str:
    config, medians = report["config"], report["medians"]
    rss = report.get("rss") or {}
    rows = []
    for name, variant in config["variants"].items():
        m, agreed = medians[name], report["agreement"][name]
        rows.append([
            variant["label"],
            fmt(report["bytes"][name]["graphs"] / 2**20, 1),
            fmt(m["load_ms"], 0),
            fmt(m["prefill_ms"], 0),
            fmt(m["decode_ms_per_token"], 1),
            _ratio(report, name, REFERENCE, "decode"),
            fmt(rss[name]["peak_rss_bytes"] / 2**20, 0) if name in rss else "-",
            f"{agreed['tokens_identical']}/{agreed['tokens']}",
            "same" if agreed["first_token_identical"] else "differs",
            " / ".join(f"{overlap:.2f}" for overlap in agreed["kept_overlap"]) or "-",
            fmt(agreed["max_logit_error_first_step"], 3),
        ])
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    machine = config["machine"]
    kept = " -> ".join(map(str, config["image_tokens"])) if config["image_tokens"] else "-"
    lines.append("")
    lines.append(
        f"Model `{config['model']}` (random weights), schedule {config['schedule']} (image tokens {kept}), "
        f"onnxruntime {machine['versions'].get('onnxruntime')} CPU, {config['threads']} "
        f"thread{'s' if config['threads'] != 1 else ''} on {machine['cpu_count']} CPUs; int4 = decoder and lm_head "
        f"weights in blocks of {config['block_size']}, fp32 activations. Load: a fresh process per load; prefill and "
        f"decode: {config['new_tokens']} new tokens, EOS ignored; medians of {config['repeats']} repetitions "
        f"interleaved across the variants (decode vs fp32: median of per-repetition ratios). Agreement: one greedy "
        f"generation of {config['agreement_tokens']} tokens against fp32's.")
    return "\n".join(lines)
