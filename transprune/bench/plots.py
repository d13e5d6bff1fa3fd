"""The report's four plots (matplotlib, Agg, files only): prefill / none against the FLOPs ratio
with y = x; FLOPs ratio against the final keep ratio for the sweep; decode ms/token per schedule;
peak RSS per schedule. matplotlib is imported only here, and only when a plot is drawn (the
``report`` extra; the runtime never needs it)."""

from __future__ import annotations

from pathlib import Path

from .flops_table import FLOPS_TEXT_TOKENS
from .schedules import PAPER_RATIOS, SCHEDULES, SWEEP

PLOTS = {"prefill": "bench_prefill_vs_flops.png", "sweep": "bench_flops_vs_keep.png",
         "decode": "bench_decode.png", "memory": "bench_peak_rss.png"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path.name


def plot_prefill_vs_flops(report: dict, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    summary, text = report["measured"]["summary"], report["config"]["text_tokens"]
    xs = [summary[n]["flops_ratio"] for n in summary]
    ys = [summary[n]["prefill_over_none"] for n in summary]
    top = max(1.05, *xs, *ys) * 1.05
    ax.plot([0, top], [0, top], "--", color="grey", label="ideal: latency ratio = FLOPs ratio")
    ax.scatter(xs, ys, zorder=3, label="runtime prefill (whole chain)")
    ax.scatter([summary[n]["flops_ratio"] for n in summary], [summary[n]["decoder_prefill_over_none"] for n in summary],
               marker="x", zorder=3, label="decoder segments + scorers only")
    # labels alternate above and below the points, in x order, so that close neighbours stay legible
    for number, (name, x, y) in enumerate(sorted(zip(summary, xs, ys), key=lambda point: point[1])):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6 if number % 2 else -12), fontsize=8)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"FLOPs ratio to none (whole prompt + IGA, {text} text tokens; x none)",
           ylabel="prefill latency / none (median of paired ratios; x none)",
           title=f"Prefill latency vs FLOPs, {report['config']['model']} model, {report['config']['threads']} "
                 f"thread(s), onnxruntime CPU")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_flops_vs_keep(report: dict, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    rows = {(r["model"], r["schedule"]): r for r in report["flops_table"]}
    sweep = sorted(SWEEP, key=lambda n: SCHEDULES[n].ratios[-1])
    final = [SCHEDULES[n].ratios[-1] for n in sweep]
    for key, label in (("ratio", "paper convention (image tokens)"),
                       ("whole_with_iga_ratio", f"whole prompt + IGA ({FLOPS_TEXT_TOKENS} text tokens)")):
        ax.plot(final, [rows[("llava-1.5-7b", n)][key] for n in sweep], "o-", label=f"LLaVA-1.5-7B, {label}")
    summary = report["measured"]["summary"]
    measured = [n for n in sweep if n in summary]
    top = 1.0
    if measured:
        model, text = report["config"]["model"], report["config"]["text_tokens"]
        ax.plot([SCHEDULES[n].ratios[-1] for n in measured], [summary[n]["flops_ratio"] for n in measured], "s:",
                label=f"{model}, whole prompt + IGA ({text} text tokens)")
        ax.plot([SCHEDULES[n].ratios[-1] for n in measured], [summary[n]["prefill_over_none"] for n in measured],
                "^", markersize=9, label=f"{model}, measured prefill / none")
        top = max(top, *(summary[n]["prefill_over_none"] for n in measured))
    paper = rows[("llava-1.5-7b", "paper")]
    ax.annotate(f"paper: {paper['ratio']:.1%}", (PAPER_RATIOS[-1], paper["ratio"]), textcoords="offset points",
                xytext=(6, -14), fontsize=8)
    # each tick names the whole ratio triple: the sweep changes more than the last ratio
    ax.set_xticks(final, [f"{x:g}\n(" + ", ".join(f"{r:g}" for r in SCHEDULES[n].ratios) + ")"
                          for n, x in zip(sweep, final)], fontsize=7)
    ax.set(xlim=(0, 0.6), ylim=(0, top * 1.05), xlabel="final keep ratio (fraction of the original image tokens)",
           ylabel="prefill FLOPs or latency, ratio to none (x none)",
           title="Keep-ratio sweep: prune after layers 7, 9, 12, TTV+IGA")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, path)


def bars(values: dict, *, ylabel: str, title: str, path: Path, digits: int) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(values)
    drawn = ax.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
    ax.bar_label(drawn, labels=[f"{values[n]:.{digits}f}" for n in names], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(xlabel="schedule", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path)


def write_plots(report: dict, docs: Path) -> dict:
    """-> {plot: file name in docs, or None when there was nothing to plot}."""
    config, summary = report["config"], report["measured"]["summary"]
    where = f"{config['model']} model, {config['threads']} thread(s)"
    out = {"prefill": plot_prefill_vs_flops(report, docs / PLOTS["prefill"]),
           "sweep": plot_flops_vs_keep(report, docs / PLOTS["sweep"]),
           "decode": bars({n: s["decode_ms_per_token"] for n, s in summary.items()}, digits=1,
                          ylabel="decode latency (ms/token, median)", path=docs / PLOTS["decode"],
                          title=f"Decode per token by schedule, {where}"),
           "memory": None}
    rss = report["measured"]["rss"]
    if rss:
        out["memory"] = bars({n: r["peak_rss_bytes"] / 2**20 for n, r in rss.items()}, digits=0,
                             ylabel="peak RSS (MiB, VmHWM)", path=docs / PLOTS["memory"],
                             title=f"Peak memory by schedule (one process each), {where}")
    return out
