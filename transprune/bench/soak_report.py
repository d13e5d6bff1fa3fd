"""The soak benchmark's verdict and summary: RSS samples as a slope, a report's failures, the
lines the script prints (:mod:`.soak` makes the report).
"""

from __future__ import annotations

import statistics
from pathlib import Path

MIB = 2**20


# -- RSS -----------------------------------------------------------------------------------------

def least_squares_slope(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return None if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def rss_summary(samples: list[tuple[int, int]]) -> dict:
    """RSS samples ``(generations done, bytes)``, the first taken after the warm-up, in MiB."""
    if not samples or samples[0][1] is None:
        return {"start_mib": None, "end_mib": None, "max_mib": None, "growth_mib": None,
                "slope_mib_per_100_second_half": None, "slope_mib_per_100_all": None}
    mib = [(n, b / MIB) for n, b in samples]
    second = mib[len(mib) // 2:]
    slope_half = least_squares_slope([n for n, _ in second], [m for _, m in second])
    slope_all = least_squares_slope([n for n, _ in mib], [m for _, m in mib])
    return {"start_mib": round(mib[0][1], 2), "end_mib": round(mib[-1][1], 2),
            "max_mib": round(max(m for _, m in mib), 2), "growth_mib": round(mib[-1][1] - mib[0][1], 2),
            "slope_mib_per_100_second_half": None if slope_half is None else round(slope_half * 100, 4),
            "slope_mib_per_100_all": None if slope_all is None else round(slope_all * 100, 4)}


# -- the verdict and the summary -----------------------------------------------------------------

def failures(report: dict) -> list[str]:
    """Why the run failed (empty: it passed)."""
    out = []
    ref = report.get("reference") or {}
    if ref and ref["distinct_answers"] < 2:
        out.append(f"the {len(report['requests'])} reference answers are all alike: a wrong answer would pass unseen")
    for entry in ref.get("stream_differs_from_generate", []):
        out.append(f"reference: request {entry['request']} streamed {entry['stream']!r}, "
                   f"generated {entry['generate']!r}")
    phases = {"soak warm-up": (report.get("soak") or {}).get("warmup"), "soak": report.get("soak"),
              "threads sharing one Pipeline": report.get("threads_shared"),
              "one Pipeline per thread": report.get("threads_control")}
    for name, phase in phases.items():
        if not phase:
            continue
        if phase["wrong"]:
            out.append(f"{name}: {phase['wrong']} of {phase['checked']} answers wrong")
        if phase["exceptions"]:
            kinds = "; ".join(f"{count} x {error}" for error, count in list(phase["errors"].items())[:3])
            out.append(f"{name}: {phase['exceptions']} exceptions ({kinds})")
        if phase.get("hung_workers"):
            out.append(f"{name}: workers {phase['hung_workers']} still running after the join timeout")
    slope = ((report.get("soak") or {}).get("rss") or {}).get("slope_mib_per_100_second_half")
    limit = report["config"]["max_rss_slope"]
    if limit is not None and slope is not None and slope > limit:
        out.append(f"soak: RSS grows {slope:.3f} MiB per 100 generations (second half), above {limit}")
    return out


def summary(report: dict) -> list[str]:
    """The few lines the script prints."""
    config, soaked = report["config"], report["soak"]
    rss = soaked["rss"]

    def mib(value):
        return "-" if value is None else f"{value:.1f} MiB"

    slope = rss["slope_mib_per_100_second_half"]
    lines = [
        f"soak: {soaked['generations']} generations on one Pipeline ({Path(config['build']['path']).name}, "
        f"{config['requests']} distinct requests, {config['new_tokens']} new tokens, "
        f"{config['threads']} onnxruntime threads): {soaked['wall_s']:.1f} s, "
        f"{soaked['ms_per_generation']['median']:.1f} ms/generation median "
        f"(first tenth {soaked['ms_per_generation']['median_first_tenth']:.1f}, "
        f"last tenth {soaked['ms_per_generation']['median_last_tenth']:.1f})",
        f"RSS: start {mib(rss['start_mib'])}, end {mib(rss['end_mib'])}, max {mib(rss['max_mib'])}, "
        f"slope {'-' if slope is None else f'{slope:+.3f}'} MiB per 100 generations (second half)",
        f"wrong answers: soak {soaked['wrong']}/{soaked['checked']} (+ warm-up {soaked['warmup']['wrong']}/"
        f"{soaked['warmup']['checked']}), errors {soaked['exceptions'] + soaked['warmup']['exceptions']}; "
        f"reference: {report['reference']['distinct_answers']} distinct answers of {config['requests']}",
    ]
    for key, label in (("threads_shared", "sharing one Pipeline"), ("threads_control", "one Pipeline per thread")):
        phase = report.get(key)
        if phase:
            hung = f", hung workers {phase['hung_workers']}" if phase["hung_workers"] else ""
            lines.append(f"{phase['workers']} threads {label}: wrong answers {phase['wrong']}/{phase['checked']} "
                         f"({phase['streamed']} of {phase['generations']} streamed), errors {phase['exceptions']}"
                         f"{hung}, {phase['wall_s']:.1f} s")
            for error, count in list(phase["errors"].items())[:3]:
                lines.append(f"  {count} x {error}")
    return lines
