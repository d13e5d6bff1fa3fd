"""The HTTP routes (Starlette): OpenAI's chat completions, plain and streamed as server-sent events,
``/v1/models``, ``/health`` and ``/metrics``.

The event loop never blocks on the model: parsing large bodies, decoding images and tokenising
run in worker threads; generation runs on the scheduler's thread, which hands each job's events
to the loop (``call_soon_threadsafe``). Every failure is answered with OpenAI's error object; an
unexpected one is logged with its traceback and answered 500 without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import INTERNAL, TIMEOUT, TOO_LARGE, ApiError, invalid
from .scheduler import Completion
from .schema import ChatRequest, parse_chat_request
from .service import Service

log = logging.getLogger("transprune.serve")
CLIENT_CLOSED = 499  # nginx's status for a client that went away: what the metrics count a disconnect as


def create_app(service: Service) -> Starlette:
    """The ASGI app over ``service``; its lifespan starts the scheduler and, at shutdown (after the
    server has let in-flight requests finish), drains it and releases the model."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        log.info("serving %s (%s) with batches of up to %d", service.model_name, service.pipeline.build.directory,
                 service.settings.max_batch)
        yield
        drained = await run_in_threadpool(service.close, timeout=service.settings.request_timeout_s)
        log.info("stopped" if drained else "stopped with generations still running")

    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        try:
            body = await _read_body(request, service.settings.max_body_bytes)
            chat = await run_in_threadpool(parse_chat_request, body, model=service.model_name,
                                           max_image_bytes=service.settings.max_image_bytes)
            events: asyncio.Queue = asyncio.Queue()
            job = await run_in_threadpool(service.prepare, chat, _emitter(events), arrived=arrived)
            service.scheduler.submit(job)
        except ApiError as exc:
            service.metrics.request(exc.status)
            return _error(exc)
        except ClientDisconnect:  # gone while sending its body: nobody to answer
            service.metrics.request(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        answer = _Answer(service, chat, job, events, arrived)
        if chat.stream:
            return StreamingResponse(answer.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await answer.whole(request)

    async def models(request: Request) -> Response:
        build = service.pipeline.build
        return JSONResponse({"object": "list", "data": [{
            "id": service.model_name, "object": "model", "created": int(service.started), "owned_by": "transprune",
            "transprune": {"schedule": build.manifest.get("schedule", {}).get("name"),
                           "image_tokens": service.pipeline.image_tokens,
                           "max_total_tokens": service.pipeline.max_total_tokens,
                           "multi_turn": service.conversations.multi_turn}}]})

    async def health(request: Request) -> Response:
        stopping = service.scheduler.stopping
        return JSONResponse({"status": "stopping" if stopping else "ok", "model": service.model_name,
                             "queue_depth": service.scheduler.queue_depth, "running": service.scheduler.running},
                            status_code=503 if stopping else 200)

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        hint = {404: "; this server answers POST /v1/chat/completions, GET /v1/models, /health and /metrics",
                405: f"; {request.url.path} does not take {request.method}"}.get(exc.status_code, "")
        return _error(ApiError(exc.status_code, f"{exc.detail}{hint}", type=INTERNAL if exc.status_code >= 500
                               else "invalid_request_error"), exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(ApiError(500, "internal server error; the server logged the traceback", type=INTERNAL))

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: internal_error})


def _error(exc: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**exc.headers, **(headers or {})})


def _emitter(events: asyncio.Queue):
    """A thread-safe ``emit`` that hands the scheduler's events to this request's loop."""
    loop = asyncio.get_running_loop()

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is gone, and the answer with it
            pass

    return emit


# An over-limit body is read and dropped (up to this much beyond the limit, for at most this long)
# before the 413 is sent: a server that answers and closes while the client is still sending makes
# the client's kernel see a reset, and the client gets a broken pipe instead of the 413 that says
# what to fix. Bodies further over are not drained: the connection is closed on them.
DRAIN_BYTES = 8 << 20
DRAIN_SECONDS = 5.0


async def _drain(stream, budget: int) -> None:
    """Reads and drops what is left of ``stream``, at most ``budget`` bytes or DRAIN_SECONDS of it."""
    async def consume() -> None:
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if size > budget:
                return
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
        await asyncio.wait_for(consume(), DRAIN_SECONDS)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (announced or streamed); what the
    client is still sending is drained first (see DRAIN_BYTES) so that it reads the 413."""
    announced = request.headers.get("content-length")
    too_large = ApiError(413, f"the request body is over this server's limit of {limit:,} bytes (the image limit "
                              f"--max-image-bytes in base64, plus 1 MiB of text); send a smaller image",
                         type=TOO_LARGE)
    if announced is not None:
        if not announced.isdigit():
            raise invalid(f"Content-Length {announced!r} is not a number")
        size = int(announced)
        if size > limit:
            if size <= limit + DRAIN_BYTES:
                await _drain(request.stream(), size)
            raise too_large
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            await _drain(stream, DRAIN_BYTES)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class _Answer:
    """One request's answer as it arrives from the scheduler: whole (JSON) or streamed (SSE)."""

    def __init__(self, service: Service, chat: ChatRequest, job, events: asyncio.Queue, arrived: float) -> None:
        self.service, self.chat, self.job, self.events, self.arrived = service, chat, job, events, arrived
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.deadline = arrived + service.settings.request_timeout_s

    def _timeout(self) -> ApiError:
        self.job.cancel("timeout")
        return ApiError(504, f"the answer took longer than this server's {self.service.settings.request_timeout_s:g} "
                             f"s (--request-timeout-s); ask for fewer max_tokens or retry when the server is less "
                             f"busy", type=TIMEOUT)

    async def _next(self, disconnected: asyncio.Task | None = None) -> tuple:
        """The job's next event; raises TimeoutError past the deadline, and ConnectionError when
        ``disconnected`` completes first."""
        getter = asyncio.ensure_future(self.events.get())
        waiting = {getter} if disconnected is None else {getter, disconnected}
        try:
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, self.deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if disconnected is not None and disconnected in done:
            raise ConnectionError
        raise TimeoutError

    def _finished(self, status: int) -> None:
        self.service.metrics.request(status, time.monotonic() - self.arrived)

    async def whole(self, request: Request) -> Response:
        disconnected = asyncio.ensure_future(_disconnect(request))
        try:
            while True:
                kind, value = await self._next(disconnected)
                if kind == "error":
                    self._finished(value.status)
                    return _error(value)
                if kind == "done":
                    self._finished(200)
                    self._log(value)
                    return JSONResponse(self._body(value))
        except TimeoutError:
            error = self._timeout()
            self._finished(error.status)
            return _error(error)
        except ConnectionError:
            self.job.cancel("disconnect")
            self._finished(CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        except asyncio.CancelledError:  # the server gave up waiting at shutdown (its graceful timeout)
            self.job.cancel("shutdown")
            raise
        finally:
            disconnected.cancel()

    def _log(self, done: Completion) -> None:
        ttft = "-" if done.time_to_first_token_s is None else f"{done.time_to_first_token_s:.3f}"
        log.info("%s %s: %d prompt + %d completion tokens (%s), first token %s s, %.3f s in all, batch of %d",
                 self.id, self.job.name, done.prompt_tokens, len(done.tokens), done.finish_reason, ttft,
                 time.monotonic() - self.arrived, done.batch_size)

    def _body(self, done: Completion) -> dict:
        body = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.service.model_name,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text}, "logprobs": None,
                             "finish_reason": done.finish_reason}],
                "usage": _usage(done)}
        extension = self._extension(done)
        if extension:
            body["transprune"] = extension
        return body

    def _extension(self, done: Completion) -> dict:
        out = {}
        if self.chat.return_kept:
            out.update(image_tokens=done.image_tokens, kept=done.kept)
        if self.chat.return_tokens:
            out["tokens"] = done.tokens
        return out

    def _chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.service.model_name, "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}
        if self.chat.include_usage:
            chunk.setdefault("usage", None)  # OpenAI: null on every chunk but the last
        return _event(chunk)

    async def stream(self):
        finished = False
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, value = await self._next()
                except TimeoutError:
                    error = self._timeout()
                    finished = True
                    self._finished(error.status)
                    yield _event(error.body())
                    return
                if kind == "text":
                    yield self._chunk({"content": value})
                elif kind == "error":
                    finished = True
                    self._finished(value.status)
                    yield _event(value.body())
                    return
                else:  # the answer is complete: counted as answered even if the last chunks do not arrive
                    finished = True
                    self._finished(200)
                    self._log(value)
                    extension = self._extension(value)
                    yield self._chunk({}, value.finish_reason, **({"transprune": extension} if extension else {}))
                    if self.chat.include_usage:
                        yield _event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                      "model": self.service.model_name, "system_fingerprint": None, "choices": [],
                                      "usage": _usage(value)})
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not finished:  # the client went away (Starlette cancelled this stream) or the server stops
                self.job.cancel("disconnect")
                self._finished(CLIENT_CLOSED)


def _usage(done: Completion) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.tokens),
            "total_tokens": done.prompt_tokens + len(done.tokens)}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so the next ASGI
    message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
