"""Helpers of the server tests: images as data URLs, request bodies, and ``ServerProcess``, a real
``transprune-serve`` in a subprocess on a free port (``--port 0``; the port is read from the line
it prints once it listens), talked to over plain HTTP (``urllib``) or the official openai client.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "tiny-paper"  # the paper_build fixture's directory name: the model id the server answers to
PROMPTS = ("What is in the picture?", "Describe the colours, the shapes and where everything is, in detail.",
           "Hi", "Is there a house? Answer in one word, then explain why.")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def noise_png(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def user(image: bytes | None, text: str) -> dict:
    """A user message holding ``image`` (if any), then ``text``."""
    parts = [] if image is None else [{"type": "image_url", "image_url": {"url": data_url(image)}}]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def body(image: bytes | None, text: str, **fields) -> dict:
    return {"model": MODEL, "messages": [user(image, text)], "temperature": 0, **fields}


class ServerProcess:
    """``transprune-serve BUILD --port 0 --threads 1 ARGS`` in a subprocess; its log in ``log_path``."""

    def __init__(self, build: Path, log_path: Path, *args: str, start_timeout: float = 60.0) -> None:
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        command = [sys.executable, "-m", "transprune.cli.serve", str(build), "--port", "0", "--threads", "1", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = self._wait_for_url(start_timeout)
        self.base_url = self.url + "/v1"
        deadline = time.monotonic() + start_timeout
        while self.get("/health")[0] != 200:  # the socket listens before the app has started
            if time.monotonic() > deadline:
                raise AssertionError(f"the server never became healthy:\n{self.log()}")
            time.sleep(0.05)

    def _wait_for_url(self, timeout: float) -> str:
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = self.process.stdout.readline()
            if not chunk:
                break
            line += chunk
        found = re.search(rb"http://[\w.\[\]:]+:\d+", line)
        if not found:
            self.process.kill()
            raise AssertionError(f"the server printed {line!r} instead of its URL; log:\n{self.log()}")
        return found.group().decode()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, payload=None, *, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 60.0) -> tuple[int, Message, bytes]:
        data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.headers, response.read()  # names case-insensitive
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            status, _, content = self.request("GET", path, timeout=5)
        except (urllib.error.URLError, ConnectionError):
            return 0, b""
        return status, content

    def post(self, payload=None, **kwargs) -> tuple[int, Message, dict]:
        """POST /v1/chat/completions -> (status, headers, JSON body)."""
        status, headers, content = self.request("POST", "/v1/chat/completions", payload, **kwargs)
        return status, headers, json.loads(content) if content else {}

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {series with labels: value}."""
        status, content = self.get("/metrics")
        assert status == 200
        series = {}
        for line in content.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                series[name] = float(value)
        return series

    def wait_for(self, condition, *, timeout: float = 30.0, what: str = "a condition") -> dict:
        """Polls ``/metrics`` until ``condition(metrics)`` holds; returns those metrics."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.metrics()
            try:
                if condition(metrics):
                    return metrics
            except KeyError:  # a counter appears with its first count
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; metrics: {metrics}")
            time.sleep(0.02)

    def terminate(self, timeout: float = 60.0) -> tuple[int, str]:
        """SIGTERM, then wait: -> (exit status, stdout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self._log.close()
        return self.process.returncode, out.decode(errors="replace")

    def close(self) -> int:
        """Stops the server (SIGTERM) if it runs -> its exit status."""
        if self.process.poll() is None:
            self.terminate(timeout=30)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
