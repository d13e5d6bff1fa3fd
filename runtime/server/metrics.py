"""The server's counters and histograms, written in Prometheus' text format (``GET /metrics``).

A few dozen series need no client library: counters, gauges read when scraped, and histograms
with fixed buckets, all behind one lock (the worker thread and the event loop both write).
"""

from __future__ import annotations

import math
import threading
from typing import Callable

PREFIX = "transprune_"
# seconds: a tiny model's first token on a CPU takes ~0.2 s, a 7B's on a Jetson several seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _labels(labels: dict) -> str:
    if not labels:
        return ""

    def escape(value) -> str:  # the exposition format's escapes inside a label value
        return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


class Histogram:
    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


class Metrics:
    """Everything ``/metrics`` shows; every method is thread-safe."""

    def __init__(self, *, queue_depth: Callable[[], int] = lambda: 0, running: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._queue_depth, self._running = queue_depth, running
        self.requests: dict[str, int] = {}  # by HTTP status
        self.cancelled: dict[str, int] = {}  # by reason: disconnect, timeout
        self.finish: dict[str, int] = {}  # by finish_reason
        self.prompt_tokens = self.completion_tokens = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.per_token = Histogram(LATENCY_BUCKETS)
        self.duration = Histogram(LATENCY_BUCKETS)
        self.image_tokens: dict[str, list] = {}  # stage -> [sum, count]

    def request(self, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[str(status)] = self.requests.get(str(status), 0) + 1
            if seconds is not None:
                self.duration.observe(seconds)

    def cancel(self, reason: str) -> None:
        with self._lock:
            self.cancelled[reason] = self.cancelled.get(reason, 0) + 1

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def next_token(self, seconds: float) -> None:
        with self._lock:
            self.per_token.observe(seconds)

    def completion(self, *, prompt_tokens: int, completion_tokens: int, finish_reason: str,
                   image_tokens: list[int]) -> None:
        """One answered request; ``image_tokens``: the image's tokens, then what each prune kept."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.finish[finish_reason] = self.finish.get(finish_reason, 0) + 1
            for stage, count in enumerate(image_tokens):
                entry = self.image_tokens.setdefault(str(stage), [0, 0])
                entry[0] += count
                entry[1] += 1

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []

            def family(name: str, kind: str, help_text: str) -> str:
                lines.append(f"# HELP {PREFIX}{name} {help_text}")
                lines.append(f"# TYPE {PREFIX}{name} {kind}")
                return PREFIX + name

            def counter(name: str, help_text: str, label: str, values: dict) -> None:
                full = family(name, "counter", help_text)
                for key, value in sorted(values.items()):
                    lines.append(f"{full}{_labels({label: key})} {value}")

            def histogram(name: str, help_text: str, hist: Histogram) -> None:
                full = family(name, "histogram", help_text)
                for bound, count in zip(hist.buckets, hist.counts):
                    lines.append(f"{full}_bucket{_labels({'le': _number(bound)})} {count}")
                lines.append(f'{full}_bucket{{le="+Inf"}} {hist.count}')
                lines.append(f"{full}_sum {_number(hist.total)}")
                lines.append(f"{full}_count {hist.count}")

            counter("requests_total", "Chat completion requests answered, by HTTP status.", "status", self.requests)
            counter("cancelled_total", "Requests stopped before their answer was complete, by reason "
                    "(disconnect: the client went away; timeout: --request-timeout-s).", "reason", self.cancelled)
            counter("finished_total", "Answers completed, by finish_reason.", "reason", self.finish)
            full = family("prompt_tokens_total", "counter", "Prompt tokens of answered requests (image tokens included).")
            lines.append(f"{full} {self.prompt_tokens}")
            full = family("completion_tokens_total", "counter", "Tokens generated for answered requests.")
            lines.append(f"{full} {self.completion_tokens}")
            full = family("queue_depth", "gauge", "Requests waiting for the model.")
            lines.append(f"{full} {self._queue_depth()}")
            full = family("running_requests", "gauge", "Requests in the batch being generated.")
            lines.append(f"{full} {self._running()}")
            histogram("batch_size", "Requests per generated batch.", self.batch_size)
            histogram("time_to_first_token_seconds", "From the request's arrival to its first generated token.",
                      self.ttft)
            histogram("time_per_output_token_seconds", "Between consecutive generated tokens of a request.",
                      self.per_token)
            histogram("request_duration_seconds", "From a request's arrival to its answer's end.", self.duration)
            full = family("image_tokens", "summary", "Image tokens per answered request at each stage: 0 is the "
                          "image's own tokens, stage s what the s-th prune kept.")
            for stage, (total, count) in sorted(self.image_tokens.items(), key=lambda item: int(item[0])):
                lines.append(f"{full}_sum{_labels({'stage': stage})} {total}")
                lines.append(f"{full}_count{_labels({'stage': stage})} {count}")
            return "\n".join(lines) + "\n"
