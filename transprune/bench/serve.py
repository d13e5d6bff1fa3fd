"""The serving benchmark (``scripts/bench_serve.py``): ``transprune-serve`` under 1, 4 and 16
concurrent clients, with batching off (``--max-batch 1``) and on (``--max-batch 16``).

1. build: ``--model`` (default ``bench``) with the paper schedule in fp32, reused from
   ``<exports>/<model>-paper-fp32`` when it is what would be exported today
   (:func:`transprune.bench.builds.ensure_build`), or ``--build`` as it is;
2. for each batching mode, one server in a subprocess (``python -m transprune.cli.serve BUILD
   --port 0 --threads T --max-batch M --max-queue 1024 --batch-wait-ms W``), all started and warmed
   up by one request first; then for each client count c, a cell per mode, side by side (the order
   alternates from one c to the next): c threads, each sending ``rounds`` streamed greedy requests
   one after the other over its own connection (at least ``min_requests`` in the cell; the sample
   picture as a PNG data URL, prompts of several lengths, ``max_tokens`` = ``new_tokens``). Only
   one server works at a time; the other waits idle;
3. per request, measured by the client: time to the first text (TTFT), the whole answer's time,
   completion tokens (from ``usage``); per cell: requests/s and generated tokens/s over the cell's
   wall time, p50/p95 TTFT, p50 latency, and from the server's ``/metrics``: its mean batch size,
   mean time to the first token (text or not) and mean time between a request's tokens.

The clients run in this process with the standard library only (no openai client): the machine's
cores are the server's, and an SSE parser costs next to nothing. The bench model is random, so an
answer may end early at EOS; tokens/s counts the tokens actually generated.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .machine import loadavg, machine_info
from .output import fmt, log
from .stats import in_turn

PROMPTS = ("What is in this picture?", "Describe the picture in detail: what is in it, the colours, and where "
           "everything is.", "Is there a house? Answer in one word.", "Count the windows.")
MODES = {"off": 1, "on": 16}  # batching -> --max-batch


@dataclass
class Settings:
    model: str = "bench"
    exports: Path = Path("exports")
    build: Path | None = None  # use this build as it is
    clients: tuple[int, ...] = (1, 4, 16)
    modes: tuple[str, ...] = ("off", "on")
    rounds: int = 1  # requests each client sends, one after the other
    min_requests: int = 4  # a cell sends at least this many (few clients send more rounds)
    new_tokens: int = 16
    threads: int = os.cpu_count() or 1
    batch_wait_ms: float = 20.0
    reexport: bool = False
    timeout_s: float = 1800.0

    @classmethod
    def from_args(cls, args) -> "Settings":
        return cls(**{f: getattr(args, f) for f in cls.__dataclass_fields__ if hasattr(args, f)})


@dataclass
class Sample:
    """One request as the client saw it (seconds from its start)."""

    clients: int
    started: float
    ttft_s: float | None = None
    latency_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Cell:
    batching: str
    max_batch: int
    clients: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    completion_tokens: int
    ttft_p50_s: float | None  # as the client sees it: the first chunk with text
    ttft_p95_s: float | None
    latency_p50_s: float | None
    mean_batch_size: float | None
    server_ttft_mean_s: float | None  # the server's: its first token, text or not (a random model's
    # first tokens are often pieces of a character, which stream only once it is complete)
    server_token_mean_s: float | None  # the server's mean time between a request's tokens
    samples: list = field(default_factory=list)


# -- the server ----------------------------------------------------------------------------------

class Server:
    """``transprune-serve`` in a subprocess on a free port; its log in ``log_path``."""

    def __init__(self, build: Path, log_path: Path, *args: str, timeout: float = 300.0) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "transprune.cli.serve", str(build), "--port", "0",
                                         *args], stdout=subprocess.PIPE, stderr=self._log,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        line = self.process.stdout.readline() if selector.select(timeout) else b""
        found = re.search(rb"http://([\w.]+):(\d+)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"transprune-serve did not start: {line!r}; see {log_path}")
        self.host, self.port = found.group(1).decode(), int(found.group(2))
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"transprune-serve never became healthy; see {log_path}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def metrics(self) -> dict[str, float]:
        series = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                series[name] = float(value)
        return series

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


# -- the clients ---------------------------------------------------------------------------------

def image_url() -> str:
    from transprune.sample_image import sample_image

    out = io.BytesIO()
    sample_image().save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def payload(model: str, url: str, prompt: str, new_tokens: int) -> bytes:
    return json.dumps({"model": model, "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0, "max_tokens": new_tokens,
                       "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                 {"type": "text", "text": prompt}]}]}).encode()


def one_request(connection: http.client.HTTPConnection, body: bytes, clients: int, timeout: float) -> Sample:
    """A streamed request: TTFT is the first chunk with text (or the end, for an empty answer)."""
    started = time.perf_counter()
    sample = Sample(clients=clients, started=started)
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        sample.error = f"HTTP {response.status}: {response.read()[:200]!r}"
        return sample
    while True:
        line = response.readline()
        if not line:
            sample.error = "the stream ended without [DONE]"
            break
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            break
        event = json.loads(line[6:])
        if "error" in event:
            sample.error = event["error"].get("message")
            break
        choices = event.get("choices") or []
        if sample.ttft_s is None and choices and (choices[0]["delta"].get("content") or choices[0]["finish_reason"]):
            sample.ttft_s = time.perf_counter() - started
        if event.get("usage"):
            sample.completion_tokens = event["usage"]["completion_tokens"]
        if time.perf_counter() - started > timeout:
            sample.error = f"no answer within {timeout} s"
            break
    response.read()
    sample.latency_s = time.perf_counter() - started
    return sample


def run_cell(server: Server, *, model: str, url: str, clients: int, rounds: int, new_tokens: int,
             timeout: float) -> tuple[list[Sample], float]:
    """``clients`` threads, ``rounds`` requests each -> (samples, wall seconds)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        start.wait()
        for round_ in range(rounds):
            body = payload(model, url, PROMPTS[(number + round_) % len(PROMPTS)], new_tokens)
            try:
                sample = one_request(connection, body, clients, timeout)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                sample = Sample(clients=clients, started=time.perf_counter(), error=f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
            with lock:
                samples.append(sample)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout)
    return samples, time.perf_counter() - began


def summarise(batching: str, max_batch: int, clients: int, samples: list[Sample], wall: float,
              before: dict, after: dict) -> Cell:
    good = [s for s in samples if s.error is None]
    tokens = sum(s.completion_tokens for s in good)
    ttfts = [s.ttft_s for s in good if s.ttft_s is not None]
    latencies = [s.latency_s for s in good if s.latency_s is not None]
    def mean(name: str) -> float | None:
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
        return round(total / count, 4) if count else None

    ttft_server = mean("transprune_time_to_first_token_seconds")
    per_token = mean("transprune_time_per_output_token_seconds")
    batch_mean = mean("transprune_batch_size")

    def pct(values, q):
        return round(float(np.percentile(values, q)), 4) if values else None

    return Cell(batching=batching, max_batch=max_batch, clients=clients, requests=len(samples),
                errors=len(samples) - len(good), wall_s=round(wall, 3),
                requests_per_s=round(len(good) / wall, 4) if wall > 0 else 0.0,
                tokens_per_s=round(tokens / wall, 3) if wall > 0 else 0.0, completion_tokens=tokens,
                ttft_p50_s=pct(ttfts, 50), ttft_p95_s=pct(ttfts, 95), latency_p50_s=pct(latencies, 50),
                mean_batch_size=batch_mean, server_ttft_mean_s=ttft_server, server_token_mean_s=per_token,
                samples=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(s).items()
                          if k != "started"} for s in samples])


# -- the whole benchmark -------------------------------------------------------------------------

def resolve_build(settings: Settings) -> dict:
    if settings.build is not None:
        return {"path": str(settings.build), "reused": True, "export_s": None}
    from transprune.checkpoints import resolve_checkpoint
    from transprune.schedule import preset

    from .builds import ensure_build

    checkpoint, _ = resolve_checkpoint(settings.model)
    out = settings.exports / f"{Path(settings.model).name}-paper-fp32"
    return ensure_build(model=settings.model, out=out, schedule=preset("paper"), checkpoint=checkpoint,
                        reexport=settings.reexport)


def run(settings: Settings, *, log_dir: Path) -> dict:
    build = resolve_build(settings)
    model = Path(build["path"]).name
    url = image_url()
    report = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
              "build": build, "machine": machine_info(), "load_before": loadavg(), "cells": [], "failures": []}
    servers: dict[str, Server] = {}
    try:
        # every mode's server is up (and warm) before the first cell, so that the cells of one client
        # count run side by side, in alternating order: drift on a shared machine falls on both modes
        for batching in settings.modes:
            max_batch = MODES[batching]
            log(f"batching {batching} (--max-batch {max_batch}): starting the server")
            servers[batching] = Server(Path(build["path"]), log_dir / f"bench_serve_{batching}.log", "--threads",
                                       str(settings.threads), "--max-batch", str(max_batch), "--max-queue", "1024",
                                       "--batch-wait-ms", str(settings.batch_wait_ms), "--request-timeout-s",
                                       str(settings.timeout_s))
            warm = run_cell(servers[batching], model=model, url=url, clients=1, rounds=1,
                            new_tokens=settings.new_tokens, timeout=settings.timeout_s)[0]
            if warm[0].error:
                report["failures"].append(f"warm-up with batching {batching}: {warm[0].error}")
        for number, clients in enumerate(settings.clients):
            rounds = max(settings.rounds, math.ceil(settings.min_requests / clients))
            modes = in_turn(tuple(settings.modes), number)
            for batching in modes:
                server = servers[batching]
                before = server.metrics()
                samples, wall = run_cell(server, model=model, url=url, clients=clients, rounds=rounds,
                                         new_tokens=settings.new_tokens, timeout=settings.timeout_s)
                cell = summarise(batching, MODES[batching], clients, samples, wall, before, server.metrics())
                report["cells"].append(asdict(cell))
                log(f"batching {batching}, {clients} clients: {cell.requests} requests in {cell.wall_s:.1f} s, "
                    f"{cell.requests_per_s:.3f} req/s, {cell.tokens_per_s:.2f} tok/s, TTFT p50 {cell.ttft_p50_s} s, "
                    f"mean batch {cell.mean_batch_size}")
                if cell.errors:
                    report["failures"].append(f"{cell.errors} of {cell.requests} requests failed with batching "
                                              f"{batching} and {clients} clients: "
                                              f"{next(s['error'] for s in cell.samples if s['error'])}")
    finally:
        for batching, server in servers.items():
            code = server.stop()
            if code != 0:
                report["failures"].append(f"the server (batching {batching}) exited {code}; see its log")
    report["cells"].sort(key=lambda cell: (settings.modes.index(cell["batching"]), cell["clients"]))
    report["load_after"] = loadavg()
    return report


def table(report: dict) -> list[str]:
    """The markdown table docs/performance.md quotes (section "Serving")."""
    lines = ["| batching | clients | requests | requests/s | generated tokens/s | TTFT p50 (s) | TTFT p95 (s) | "
             "server TTFT mean (s) | latency p50 (s) | s/token (server) | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        lines.append(f"| {cell['batching']} (--max-batch {cell['max_batch']}) | {cell['clients']} | "
                     f"{cell['requests']} | {fmt(cell['requests_per_s'], 3)} | {fmt(cell['tokens_per_s'], 2)} | "
                     f"{fmt(cell['ttft_p50_s'], 2)} | {fmt(cell['ttft_p95_s'], 2)} | "
                     f"{fmt(cell['server_ttft_mean_s'], 2)} | {fmt(cell['latency_p50_s'], 2)} | "
                     f"{fmt(cell['server_token_mean_s'], 3)} | {fmt(cell['mean_batch_size'], 2)} |")
    return lines
