"""Back-pressure and time limits of a real server: with ``--max-batch 1 --max-queue 1``, a request
that finds the model busy and the queue full gets 429 with Retry-After (and the openai client's
RateLimitError); a request over ``--request-timeout-s`` gets 504 (or an error event when streamed)
and its generation stops, and the server goes on serving."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import pytest

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the tests talk to the server with the openai client (dev extra)")

from .serving import MODEL, ServerProcess, body, noise_png, user  # noqa: E402

IMAGE = noise_png(64, 48, 1)
TIMEOUT_S = 2
SLOW = 1450  # tokens that take about 5 s here (3.3 ms each): more than twice TIMEOUT_S


@pytest.fixture(scope="module")
def server(paper_build, tmp_path_factory):
    process = ServerProcess(paper_build[0], tmp_path_factory.mktemp("serve-limits") / "server.log",
                            "--max-batch", "1", "--max-queue", "1", "--request-timeout-s", str(TIMEOUT_S))
    yield process
    assert process.close() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


def start_slow_request(server) -> socket.socket:
    """A slow request on a raw connection, left running (close the socket to cancel it)."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(body(IMAGE, "Describe it.", max_tokens=SLOW)).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_a_full_queue_answers_429_with_retry_after(server):
    slow = start_slow_request(server)
    server.wait_for(lambda m: m["transprune_running_requests"] == 1, what="the slow request to run")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(server.post, body(IMAGE, "Hi", max_tokens=3))
        server.wait_for(lambda m: m["transprune_queue_depth"] == 1, what="a request to queue")
        status, headers, answer = server.post(body(IMAGE, "Hi", max_tokens=3))
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert answer["error"]["type"] == "rate_limit_error" and "--max-queue" in answer["error"]["message"]
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=MODEL, messages=[user(IMAGE, "Hi")], max_tokens=3)
        slow.shutdown(socket.SHUT_RDWR)  # the slow client goes away: the queued request runs
        slow.close()
        status, _, answer = queued.result(timeout=30)
    assert status == 200 and answer["usage"]["completion_tokens"] == 3
    assert server.metrics()['transprune_requests_total{status="429"}'] == 2


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_request_over_the_timeout_gets_504_and_its_generation_stops(server, stream):
    before = server.metrics().get('transprune_cancelled_total{reason="timeout"}', 0)
    started = time.monotonic()
    status, _, content = server.request("POST", "/v1/chat/completions",
                                        body(IMAGE, "Describe it.", max_tokens=SLOW, stream=stream))
    took = time.monotonic() - started
    assert TIMEOUT_S <= took < TIMEOUT_S + 1.5
    if stream:  # the answer had started (200): the stream ends with an error event instead of [DONE]
        events = [json.loads(line[6:]) for line in content.decode().splitlines() if line.startswith("data: {")]
        assert status == 200 and events[-1]["error"]["type"] == "timeout" and b"[DONE]" not in content
    else:
        error = json.loads(content)["error"]
        assert status == 504 and error["type"] == "timeout" and "--request-timeout-s" in error["message"]
    server.wait_for(lambda m: m.get('transprune_cancelled_total{reason="timeout"}', 0) == before + 1 and
                    m["transprune_running_requests"] == 0, timeout=2, what="the generation to stop")
    status, _, answer = server.post(body(IMAGE, "Hi", max_tokens=2))
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length"
