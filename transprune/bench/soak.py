"""The soak benchmark (``scripts/soak.py``): many generations on one ``Pipeline`` with its memory
sampled, then threads sharing one ``Pipeline``; every answer checked against a single-threaded
reference.

In this one process:

1. requests: every (image, prompt, decoding) of :data:`IMAGES` x :data:`PROMPTS` x {greedy,
   sampled}; a sampled request has temperature ``temperature`` and a seed of its own. EOS is
   ignored (the benchmark models are random), so every answer is exactly ``new_tokens`` tokens;
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
``max_rss_slope`` when one is set: :func:`failures` lists why, and the script exits 1.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from .export_and_runtime import open_pipeline
from .machine import loadavg, machine_info
from .output import log
from .rss import current_rss_bytes

MIB = 2**20
PROMPTS = (
    "Describe the picture in detail: what is in it, the colours, and where everything is.",
    "What is in this image?",
    "Is there a house? Answer in one word, then explain why.",
)
STREAM_EVERY = 3  # in the thread phases, worker w's i-th generation streams when (i + w) % 3 == 2
MAX_DETAILS = 20  # wrong answers and exceptions recorded in full per phase (all are counted)


# -- the requests --------------------------------------------------------------------------------

def noise_image(width: int, height: int, seed: int):
    """Seeded uniform RGB noise."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def shapes_image(width: int, height: int, seed: int):
    """Seeded geometry: a checkerboard under concentric rings and a diagonal band, colours from the seed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(4, 3)).astype(np.float64)
    y, x = np.mgrid[0:height, 0:width]
    img = np.where((((x // 24) + (y // 24)) % 2 == 0)[..., None], colours[0], colours[1])
    r = np.hypot(x - width * 0.6, y - height * 0.4)
    img = np.where((((r // 18) % 2 == 0) & (r < min(width, height) * 0.35))[..., None], colours[2], img)
    img = np.where((np.abs(x - y * width / height) < width * 0.05)[..., None], colours[3], img)
    return Image.fromarray(img.astype(np.uint8))


def _sample(width: int, height: int, seed: int):
    from transprune.sample_image import sample_image

    return sample_image(width=width, height=height, seed=seed)


# (name, make, width, height, seed): the pictures every request is made of
IMAGES = (
    ("scene 480x360", _sample, 480, 360, 0),  # transprune.sample_image's default picture
    ("scene 300x500", _sample, 300, 500, 1),
    ("noise 640x480", noise_image, 640, 480, 7),
    ("shapes 256x256", shapes_image, 256, 256, 11),
)


@dataclasses.dataclass(frozen=True)
class Request:
    index: int
    name: str  # "<image> | prompt <p> | greedy" or "... | sampled seed <s>"
    image: object  # PIL image, shared read-only by every thread
    prompt: str
    temperature: float
    seed: int | None

    def options(self, new_tokens: int) -> dict:
        return {"max_new_tokens": new_tokens, "temperature": self.temperature, "seed": self.seed}

    def describe(self) -> dict:
        return {"index": self.index, "name": self.name, "image": self.name.split(" | ")[0],
                "image_size": list(self.image.size), "prompt": self.prompt, "temperature": self.temperature,
                "seed": self.seed}


def make_requests(temperature: float) -> list[Request]:
    """Every image x prompt x {greedy, sampled at ``temperature`` with a seed of its own}."""
    requests = []
    for name, make, width, height, seed in IMAGES:
        image = make(width, height, seed)
        for p, prompt in enumerate(PROMPTS):
            for sampled in (False, True):
                index = len(requests)
                request_seed = 1000 + index if sampled else None
                label = f"{name} | prompt {p} | " + (f"sampled seed {request_seed}" if sampled else "greedy")
                requests.append(Request(index, label, image, prompt, temperature if sampled else 0.0, request_seed))
    return requests


# -- answers and their check ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Answer:
    tokens: list[int] | None  # None for a streamed answer (only its text is known)
    text: str


def open_runtime(build: Path, threads: int):
    """A Pipeline on ``build`` with EOS ignored, so every answer is exactly ``new_tokens`` long."""
    pipeline = open_pipeline(build, threads=threads)
    pipeline.build.eos_token_id = None
    return pipeline


def answer(pipeline, request: Request, new_tokens: int, *, stream: bool = False) -> Answer:
    if stream:
        return Answer(None, "".join(pipeline.stream(request.image, request.prompt, **request.options(new_tokens))))
    result = pipeline.generate(request.image, request.prompt, **request.options(new_tokens))
    return Answer(list(result.tokens), result.text)


def mismatch(got: Answer, want: Answer) -> str | None:
    """Why ``got`` is not the reference answer ``want`` (None: it is). A streamed answer is judged by its text."""
    if got.tokens is not None and got.tokens != want.tokens:
        return f"tokens {got.tokens} != reference {want.tokens}"
    if got.text != want.text:
        return f"text {got.text!r} != reference {want.text!r}"
    return None


class Tally:
    """Wrong answers and exceptions of one phase: every one counted, the first few recorded in full.
    Thread-safe (the thread phases share one)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked = self.wrong = self.exceptions = 0
        self.wrong_details: list[dict] = []
        self.by_error: collections.Counter = collections.Counter()
        self.error_details: list[dict] = []
        self.wrong_by_request: collections.Counter = collections.Counter()

    def check(self, got: Answer, want: Answer, request: Request, where: dict) -> bool:
        why = mismatch(got, want)
        with self.lock:
            self.checked += 1
            if why is None:
                return True
            self.wrong += 1
            self.wrong_by_request[request.index] += 1
            if len(self.wrong_details) < MAX_DETAILS:
                self.wrong_details.append({**where, "request": request.index, "streamed": got.tokens is None,
                                           "why": why})
        return False

    def error(self, exc: BaseException, request: Request, where: dict) -> None:
        key = f"{type(exc).__name__}: {str(exc)[:300]}"
        with self.lock:
            self.exceptions += 1
            self.by_error[key] += 1
            if len(self.error_details) < MAX_DETAILS:
                self.error_details.append({**where, "request": request.index, "error": key,
                                           "traceback": traceback.format_exc(limit=8)[-3000:]})

    def to_dict(self) -> dict:
        return {"checked": self.checked, "wrong": self.wrong, "exceptions": self.exceptions,
                "wrong_by_request": dict(sorted(self.wrong_by_request.items())),
                "errors": dict(self.by_error.most_common()), "wrong_details": self.wrong_details,
                "error_details": self.error_details}


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
