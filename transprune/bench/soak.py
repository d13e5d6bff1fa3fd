"""The soak benchmark (``scripts/soak.py``): many generations on one ``Pipeline`` with its memory
sampled, then threads sharing one ``Pipeline``; every answer checked against a single-threaded
reference.

In this one process:

1. requests (:mod:`.soak_requests`): every (image, prompt, decoding) of ``IMAGES`` x ``PROMPTS`` x
   {greedy, sampled}; a sampled request has temperature ``temperature`` and a seed of its own. EOS
   is ignored (the benchmark models are random), so every answer is exactly ``new_tokens`` tokens;
2. reference: each request answered once, single-threaded, on a fresh Pipeline of its own (opened,
   used once through ``generate`` and once through ``stream``, closed). Its tokens and text are
   what every later answer must equal. The reference answers must not all be alike, or an answer
   handed to the wrong request would pass unseen; each request's streamed text must equal its
   generated text;
3. soak: ONE Pipeline; a warm-up pass over every request (checked, not counted), then
   ``generations`` generations cycling through the requests, each answer's tokens and text
   compared with the reference, the process's RSS (resident set, ``/proc/self/statm``) read after
   every ``rss_every``-th. Reported: RSS after the warm-up, at the end and at most, and the
   least-squares slope over the second half of the samples in MiB per 100 generations (flat
   memory is a slope near 0);
4. threads, shared: ``workers`` threads share ONE Pipeline (warmed up first), each making
   ``per_worker`` generations. Worker w's i-th is request ``(i * workers + w) mod R``, so the
   workers run different requests side by side; every third (``(i + w) % 3 == 2``) goes through
   ``Pipeline.stream`` (the joined text compared with the reference text), the others through
   ``generate`` (tokens and text compared). Counted: wrong answers, exceptions by type and
   message, workers still running after ``join_timeout`` s; timed: the wall time;
5. threads, control: the same work with one Pipeline per thread (opened before the clock starts).
   Wrong answers here would not be a sharing problem (the images, say, or onnxruntime itself).

A run fails on any wrong answer or exception in any phase, a hung worker, reference answers all
alike, a streamed reference text that differs from the generated one, or an RSS slope above
``max_rss_slope`` when one is set: :func:`.soak_report.failures` lists why, and the script exits 1.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

from .machine import loadavg, machine_info
from .output import log
from .rss import current_rss_bytes
from .soak_report import MIB, failures, rss_summary
from .soak_requests import Answer, Request, Tally, answer, make_requests, open_runtime

STREAM_EVERY = 3  # in the thread phases, worker w's i-th generation streams when (i + w) % 3 == 2


# -- settings ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run does (the script's command line, defaults resolved)."""

    model: str = "tiny"
    exports: Path = Path("exports")
    build: Path | None = None  # use this build as it is instead of exporting <exports>/<model>-paper
    reexport: bool = False
    threads: int = 1  # onnxruntime intra-op threads of every Pipeline
    generations: int = 1000
    workers: int = 4
    per_worker: int = 50
    new_tokens: int = 16
    temperature: float = 0.8
    rss_every: int = 1
    progress_every: int = 100
    join_timeout: float = 1800.0
    max_rss_slope: float | None = None  # MiB per 100 generations; None: reported, never a failure
    skip_threads: bool = False

    @classmethod
    def from_args(cls, args) -> Settings:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def resolve_build(settings: Settings) -> dict:
    """The paper build: ``settings.build`` as it is, or ``<exports>/<model>-paper`` reused or exported."""
    if settings.build is not None:
        return {"path": str(settings.build), "reused": True, "export_s": None, "given": True}
    from transprune.checkpoints import resolve_checkpoint
    from transprune.schedule import preset

    from .builds import build_dir, ensure_build

    checkpoint, _ = resolve_checkpoint(settings.model)
    out = build_dir(settings.exports, settings.model, "paper")
    return {**ensure_build(model=settings.model, out=out, schedule=preset("paper"), checkpoint=checkpoint,
                           reexport=settings.reexport), "given": False}


# -- the phases ----------------------------------------------------------------------------------

def reference_answers(build: Path, requests: list[Request], settings: Settings) -> tuple[list[Answer], dict]:
    """Each request once, single-threaded, on a fresh Pipeline of its own. -> (answers, checks)."""
    answers, stream_differs = [], []
    started = time.perf_counter()
    for request in requests:
        pipeline = open_runtime(build, settings.threads)
        try:
            reference = answer(pipeline, request, settings.new_tokens)
            streamed = answer(pipeline, request, settings.new_tokens, stream=True)
        finally:
            pipeline.close()
        if streamed.text != reference.text:
            stream_differs.append({"request": request.index, "generate": reference.text, "stream": streamed.text})
        answers.append(reference)
    distinct = len({tuple(a.tokens) for a in answers})
    log(f"reference: {len(requests)} requests, {distinct} distinct answers, {time.perf_counter() - started:.1f} s")
    return answers, {"distinct_answers": distinct, "stream_differs_from_generate": stream_differs,
                     "wall_s": round(time.perf_counter() - started, 2)}


def soak(build: Path, requests: list[Request], reference: list[Answer], settings: Settings) -> dict:
    """One Pipeline: a warm-up pass over every request, then ``generations`` generations, RSS sampled."""
    pipeline = open_runtime(build, settings.threads)
    warmup, tally = Tally(), Tally()
    wall_ms: list[float] = []
    try:
        for request in requests:
            try:
                warmup.check(answer(pipeline, request, settings.new_tokens), reference[request.index], request,
                             {"warmup": True})
            except Exception as exc:  # noqa: BLE001 - every exception is counted and reported
                warmup.error(exc, request, {"warmup": True})
        rss = [(0, current_rss_bytes())]
        started = time.perf_counter()
        for n in range(1, settings.generations + 1):
            request = requests[(n - 1) % len(requests)]
            t0 = time.perf_counter()
            try:
                got = answer(pipeline, request, settings.new_tokens)
                wall_ms.append(round((time.perf_counter() - t0) * 1e3, 3))
                tally.check(got, reference[request.index], request, {"generation": n})
            except Exception as exc:  # noqa: BLE001
                tally.error(exc, request, {"generation": n})
            if n % settings.rss_every == 0 or n == settings.generations:
                rss.append((n, current_rss_bytes()))
            if n % settings.progress_every == 0 or n == settings.generations:
                now = current_rss_bytes()
                log(f"soak {n}/{settings.generations}: RSS {'-' if now is None else f'{now / MIB:.1f}'} MiB, "
                    f"{tally.wrong} wrong, {tally.exceptions} errors, "
                    f"{n / (time.perf_counter() - started):.1f} generations/s")
        wall_s = time.perf_counter() - started
    finally:
        pipeline.close()
    tenth = max(1, len(wall_ms) // 10)
    return {"generations": settings.generations, "warmup": warmup.to_dict(), **tally.to_dict(),
            "wall_s": round(wall_s, 2), "generations_per_s": round(settings.generations / wall_s, 3),
            "ms_per_generation": {"median": statistics.median(wall_ms) if wall_ms else None,
                                  "median_first_tenth": statistics.median(wall_ms[:tenth]) if wall_ms else None,
                                  "median_last_tenth": statistics.median(wall_ms[-tenth:]) if wall_ms else None},
            "rss": rss_summary(rss),
            "rss_samples": [[n, b] for n, b in rss], "wall_ms": wall_ms}


def thread_work(worker: int, settings: Settings, requests: list[Request]) -> list[tuple[Request, bool]]:
    """Worker ``worker``'s generations in order: (request, streamed)."""
    return [(requests[(i * settings.workers + worker) % len(requests)], (i + worker) % STREAM_EVERY == 2)
            for i in range(settings.per_worker)]


def threads(pipelines: Callable[[int], object], requests: list[Request], reference: list[Answer],
            settings: Settings, label: str) -> dict:
    """``settings.workers`` threads, worker w on ``pipelines(w)``, each making ``per_worker`` generations."""
    tally = Tally()
    done = [0] * settings.workers
    wall: list[float | None] = [None] * settings.workers
    start = threading.Barrier(settings.workers + 1)

    def work(w: int) -> None:
        pipeline = pipelines(w)
        start.wait()
        t0 = time.perf_counter()
        for i, (request, streamed) in enumerate(thread_work(w, settings, requests)):
            where = {"worker": w, "generation": i}
            try:
                got = answer(pipeline, request, settings.new_tokens, stream=streamed)
                tally.check(got, reference[request.index], request, where)
            except Exception as exc:  # noqa: BLE001 - every exception is counted and reported
                tally.error(exc, request, where)
            done[w] += 1
        wall[w] = round(time.perf_counter() - t0, 3)

    workers = [threading.Thread(target=work, args=(w,), name=f"soak-{label}-{w}", daemon=True)
               for w in range(settings.workers)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    deadline = started + settings.join_timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.perf_counter()))
    wall_s = time.perf_counter() - started
    hung = [w for w, worker in enumerate(workers) if worker.is_alive()]
    total = settings.workers * settings.per_worker
    streamed = sum(s for w in range(settings.workers) for _, s in thread_work(w, settings, requests))
    result = {"workers": settings.workers, "per_worker": settings.per_worker, "generations": total,
              "streamed": streamed, "completed": sum(done), **tally.to_dict(), "hung_workers": hung,
              "wall_s": round(wall_s, 2), "worker_wall_s": wall,
              "generations_per_s": round(sum(done) / wall_s, 3) if wall_s > 0 else None}
    log(f"threads ({label}): {settings.workers} x {settings.per_worker}: {tally.wrong} wrong, "
        f"{tally.exceptions} errors, {len(hung)} hung, {wall_s:.1f} s")
    return result


def threads_shared(build: Path, requests: list[Request], reference: list[Answer], settings: Settings) -> dict:
    pipeline = open_runtime(build, settings.threads)
    try:
        answer(pipeline, requests[0], settings.new_tokens)  # warm-up (pools, sessions), not counted
        return threads(lambda w: pipeline, requests, reference, settings, "one shared Pipeline")
    finally:
        pipeline.close()


def threads_control(build: Path, requests: list[Request], reference: list[Answer], settings: Settings) -> dict:
    own = [open_runtime(build, settings.threads) for _ in range(settings.workers)]
    try:
        for pipeline in own:
            answer(pipeline, requests[0], settings.new_tokens)  # warm-up, not counted
        return threads(lambda w: own[w], requests, reference, settings, "one Pipeline per thread")
    finally:
        for pipeline in own:
            pipeline.close()


# -- the whole run -------------------------------------------------------------------------------

def run(settings: Settings, *, reference: list[Answer] | None = None,
        save: Callable[[dict], None] | None = None) -> dict:
    """Every phase; -> the JSON report (``failures`` in it). ``reference`` replaces the computed
    reference answers (tests give a corrupted one, to see the check fail); ``save(report)`` is
    called after every phase, so that a crash leaves the phases done so far on disk."""
    started = time.time()
    save = save or (lambda report: None)
    build = resolve_build(settings)
    path = Path(build["path"])
    requests = make_requests(settings.temperature)
    report = {
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()},
                   "build": build, "requests": len(requests), "eos": "ignored: every answer is new_tokens long",
                   "stream_rule": f"thread phases: worker w's i-th generation streams when (i + w) % "
                                  f"{STREAM_EVERY} == 2",
                   "request_rule": "soak: generation n (from 1) is request (n - 1) mod R; threads: worker w's i-th "
                                   "is request (i * workers + w) mod R",
                   "rss_method": "resident pages of /proc/self/statm; sample 0 after the warm-up pass, then after "
                                 "every rss_every-th generation; slope: least squares over the second half of "
                                 "the samples, MiB per 100 generations",
                   "machine": machine_info(), "loadavg_before": loadavg(), "loadavg_after": None,
                   "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "wall_s": None},
        "status": "running: reference",
        "requests": [r.describe() for r in requests],
    }
    save(report)
    if reference is None:
        reference, checks = reference_answers(path, requests, settings)
    else:
        checks = {"distinct_answers": len({tuple(a.tokens) for a in reference}),
                  "stream_differs_from_generate": [], "wall_s": None, "given": True}
    report["reference"] = {**checks, "answers": [{"tokens": a.tokens, "text": a.text} for a in reference]}
    phases = [("soak", soak)]
    if not settings.skip_threads:
        phases += [("threads_shared", threads_shared), ("threads_control", threads_control)]
    for key, phase in phases:
        report["status"] = f"running: {key}"
        save(report)
        log(f"{key}: starting")
        report[key] = phase(path, requests, reference, settings)
    report["status"] = "complete"
    report["config"]["loadavg_after"] = loadavg()
    report["config"]["wall_s"] = round(time.time() - started, 1)
    report["failures"] = failures(report)
    save(report)
    return report
