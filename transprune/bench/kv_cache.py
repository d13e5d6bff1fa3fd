"""The KV cache benchmark (``scripts/bench_kv_cache.py``): one decode step of a segment graph with
its cache written in place, against the same graph fed by a host that copies every cache every
step, at several cache lengths, side by side on onnxruntime's CPU provider.

The two hosts run the same graph on the same inputs:

* ``in_place``: the runtime's ``OrtBackend``. One buffer per cache (``runtime/kv_pool.py``): the
  prompt block written by prefill in place, each decode step's new position written into the
  generated block; the graph reads both blocks where they are.
* ``copying``: the plain host loop (``runtime.backend.Backend.run_segment``, what
  ``scripts/standalone_chain.py`` does): both blocks as arrays of exactly their length, each
  step's new keys/values appended with ``np.concatenate``, i.e. every cache copied every step.
  This is what the segment graphs did before schema 5, inside the graph (``present =
  concat(past, new)``): a copy of every cache per token, into a second buffer.

Per cache length N: a prefill of N random hidden states (the cache then holds N positions), then
``steps`` decode steps of one random token; the median step time per host, interleaved repeat by
repeat. KV bytes held: what each host keeps for a generation of N + steps positions (the copying
host, like the former double-buffered runtime, needs two caches' worth at each step: the old one
and its copy).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .machine import loadavg, machine_info
from .output import fmt, log
from .stats import in_turn, median, paired_ratio

HOSTS = ("copying", "in_place")


@dataclasses.dataclass(frozen=True)
class Settings:
    build: Path
    segment: str | None  # None: the build's first segment
    cached: tuple[int, ...]
    steps: int
    repeats: int
    threads: int


def run(settings: Settings) -> dict:
    from transprune.runtime.backend import Backend
    from transprune.runtime.build import Build
    from transprune.runtime.ort_backend import OrtBackend

    class CopyingOrt(OrtBackend):  # the same sessions, the plain host loop's cache handling
        new_cache = Backend.new_cache
        run_segment = Backend.run_segment

    build = Build.open(settings.build, verify=False)
    segment = next((s for s in build.segments if settings.segment in (None, s.name)), None)
    if segment is None:
        raise ValueError(f"no segment {settings.segment!r} in {settings.build}; it has "
                         f"{', '.join(s.name for s in build.segments)}")
    limit = int(build.limits["max_total_tokens"])
    if max(settings.cached) + settings.steps > limit:
        raise ValueError(f"{max(settings.cached)} cached + {settings.steps} steps exceed the model's {limit} positions")
    started = time.perf_counter()
    load_before = loadavg()
    hosts = {"copying": CopyingOrt(build, threads=settings.threads), "in_place": OrtBackend(build, threads=settings.threads)}
    hidden_size = segment.graph.inputs[0].axes[2]
    rng = np.random.default_rng(0)
    results = {}
    for cached in settings.cached:
        samples = {host: [] for host in HOSTS}
        for rep in range(settings.repeats + 1):  # the first is a warm-up
            order = in_turn(HOSTS, rep)
            for host in order:
                times = _decode_steps(hosts[host], segment, cached, settings.steps, hidden_size, build.float_type, rng)
                if rep:
                    samples[host].append(float(np.median(times)) * 1e3)
        log(f"{segment.name}, {cached} cached: " + "; ".join(f"{h} {median(samples[h]):.2f} ms/step" for h in HOSTS))
        per_position = len(segment.kv) * segment.kv_heads * segment.head_dim * np.dtype(build.float_type).itemsize
        capacity = cached + settings.steps
        results[str(cached)] = {
            "samples_ms": samples,
            "median_ms": {h: round(median(samples[h]), 3) for h in HOSTS},
            "in_place_over_copying": round(paired_ratio(samples["in_place"], samples["copying"]), 3),
            "kv_bytes": {"in_place": per_position * capacity, "copying": 2 * per_position * capacity},
        }
    for host in hosts.values():
        host.close()
    return {"config": {**dataclasses.asdict(settings), "build": str(settings.build), "segment": segment.name,
                       "layers": list(segment.layers), "kv_heads": segment.kv_heads, "head_dim": segment.head_dim,
                       "dtype": build.manifest["dtype"], "machine": machine_info(), "loadavg_before": load_before,
                       "loadavg_after": loadavg(), "wall_s": round(time.perf_counter() - started, 1)},
            "results": results}


def _decode_steps(backend, segment, cached: int, steps: int, hidden_size: int, float_type, rng) -> list[float]:
    """Prefill ``cached`` random positions, then time ``steps`` one-token decode steps."""
    backend.start_generation()
    cache = backend.new_cache(segment, batch=1, capacity=cached + steps)
    hidden = rng.standard_normal((1, cached, hidden_size)).astype(float_type)
    mask = np.ones((1, cached), dtype=np.int64)
    backend.run_segment(segment, {"hidden": hidden, "position_ids": np.arange(cached)[None], "attention_mask": mask},
                        cache)
    times = []
    for step in range(steps):
        mask = np.ones((1, cached + step + 1), dtype=np.int64)
        feeds = {"hidden": rng.standard_normal((1, 1, hidden_size)).astype(float_type),
                 "position_ids": np.array([[cached + step]]), "attention_mask": mask}
        begun = time.perf_counter()
        backend.run_segment(segment, feeds, cache)
        times.append(time.perf_counter() - begun)
    return times


def markdown(report: dict) -> str:
    config = report["config"]
    lines = [f"{config['segment']} (layers {config['layers'][0]}-{config['layers'][1]}) of {config['build']}, "
             f"{config['dtype']}, {config['threads']} threads, {config['steps']} steps x {config['repeats']} repeats",
             "",
             "| cached positions | copying every cache (ms/step) | in place (ms/step) | in place / copying "
             "| KV MiB held: copying | in place |",
             "|---|---|---|---|---|---|"]
    for cached, row in report["results"].items():
        mib = {h: row["kv_bytes"][h] / 2**20 for h in HOSTS}
        lines.append(f"| {int(cached):,} | {fmt(row['median_ms']['copying'], 2)} | {fmt(row['median_ms']['in_place'], 2)} "
                     f"| {row['in_place_over_copying']:.2f}x | {fmt(mib['copying'], 1)} | {fmt(mib['in_place'], 1)} |")
    return "\n".join(lines)
