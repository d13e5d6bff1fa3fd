"""``transprune-serve``: an OpenAI-compatible HTTP server over a build (chat completions, streamed
or not), batching concurrent requests, without PyTorch.

    transprune-serve exports/tiny-paper --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d @request.json

Prints ``transprune-serve: serving MODEL on http://HOST:PORT`` once it listens (``--port 0`` picks a
free port). SIGTERM or Ctrl-C stops taking connections, lets the requests in flight finish (up to
``--request-timeout-s``), then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import socket
import sys
from pathlib import Path

from ..errors import TransPruneError
from ._common import run_user_command
from .run import _backend_options

PROG = "transprune-serve"
MIB = 1 << 20
SPARE_CONNECTIONS = 64  # beyond the queue and a batch: health checks, metrics, requests refused at once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", type=Path, help="a directory written by transprune-export")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients send (default: the build directory's name)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt", "torch"])
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                        help="onnxruntime execution provider (cuda and tensorrt need onnxruntime-gpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: all cores)")
    parser.add_argument("--int4-accuracy-level", type=int, default=None, choices=[0, 4],
                        help="int4 builds on onnxruntime (see transprune-run)")
    parser.add_argument("--engines", type=Path, default=None, help="tensorrt backend: the engine directory")
    parser.add_argument("--checkpoint", default=None, help="torch backend: the checkpoint, if it moved")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the build's files")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="requests generated together in one batch (default 8; 1 turns batching off; with "
                             "--backend tensorrt at most the engines' --max-batch)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting for the model before new ones get 429 (default 64)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long the oldest waiting request waits for others to share its batch (default 10)")
    parser.add_argument("--request-timeout-s", type=float, default=300.0,
                        help="a request not answered within this many seconds gets 504 and its generation stops; "
                             "also how long a shutdown waits for requests in flight (default 300)")
    parser.add_argument("--max-image-bytes", type=int, default=20 * MIB,
                        help=f"largest image accepted, in bytes (default {20 * MIB}, 20 MiB); larger ones get 413")
    parser.add_argument("--default-max-tokens", type=int, default=256,
                        help="tokens generated when a request gives no max_tokens (default 256, bounded by the "
                             "positions the prompt leaves)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn's access log)")
    return parser


def settings_from(args):
    from transprune.runtime.server import ServeSettings

    settings = ServeSettings(max_batch=args.max_batch, max_queue=args.max_queue, batch_wait_ms=args.batch_wait_ms,
                             request_timeout_s=args.request_timeout_s, max_image_bytes=args.max_image_bytes,
                             default_max_tokens=args.default_max_tokens, model_name=args.model_name)
    settings.check()
    return settings


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), bound here so that a port in use is a clear error."""
    if not 0 <= port <= 65535:
        raise TransPruneError(f"--port {port} must be from 0 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TransPruneError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise TransPruneError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port, or stop "
                              f"what is using it") from None
    sock.listen(2048)
    return sock


def serve(args) -> int:
    try:
        import uvicorn

        from transprune.runtime.server import Service, create_app
    except ImportError as exc:
        raise TransPruneError(f"transprune-serve needs the serve extra ({exc.name} is missing); "
                              f"pip install 'transprune[serve]'") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from(args)
    sock = listen(args.host, args.port)
    try:
        service = Service.open(args.build_dir, settings, backend=args.backend, verify=not args.no_verify,
                               **_backend_options(args))
        # connections beyond what the queue and a batch can use get uvicorn's 503: each may be reading a
        # body of up to --max-image-bytes in base64, so their number bounds the memory requests take
        config = uvicorn.Config(create_app(service), log_config=None, log_level=args.log_level,
                                access_log=args.access_log,
                                limit_concurrency=settings.max_queue + settings.max_batch + SPARE_CONNECTIONS,
                                timeout_graceful_shutdown=max(1, math.ceil(settings.request_timeout_s)))
        server = uvicorn.Server(config)
        host, port = sock.getsockname()[:2]
        print(f"{PROG}: serving {service.model_name} on http://{_url_host(host)}:{port} "
              f"(batches of up to {settings.max_batch}, queue {settings.max_queue})", flush=True)
        signals = _record_signals()
        try:
            server.run(sockets=[sock])  # uvicorn handles SIGINT/SIGTERM: no new connections, in-flight ones end
        finally:
            stopped_by = signals.restore()
    finally:
        sock.close()
    if not server.started:
        raise TransPruneError("the server did not start; see the log above")
    reason = f" on {signal.Signals(stopped_by[0]).name}" if stopped_by else ""
    print(f"{PROG}: stopped{reason} after answering the requests in flight", flush=True)
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _record_signals:
    """uvicorn re-raises the signal that stopped it once it has shut down gracefully, which would
    kill the process without a word; recording it instead lets the server exit 0 with one line."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.previous = {sig: signal.signal(sig, self._record) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _record(self, signum, frame) -> None:
        self.seen.append(signum)

    def restore(self) -> list[int]:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        return self.seen


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_user_command(PROG, lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
