"""``transprune-serve`` on the tiny paper build, in a subprocess on a free port (one server for the
module), talked to with the official openai client and plain HTTP:

- the openai client, plain and streamed, gets the greedy text and tokens ``Pipeline.generate``
  gives, with usage, finish_reason and the kept image tokens of the extension;
- a multi-turn conversation is rendered as the checkpoint's processor renders it;
- 16 concurrent clients are all answered correctly, in shared batches;
- every bad input gets its status and an OpenAI error object, never a 500, and the server goes on;
- a client that disconnects stops its generation (``/metrics``), streamed or not.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time

import pytest

pytest.importorskip("uvicorn", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the tests talk to the server with the openai client (dev extra)")

from transprune.runtime.pipeline import Pipeline  # noqa: E402

from .serving import MODEL, PROMPTS, ServerProcess, body, data_url, noise_png, png_header, user  # noqa: E402

IMAGES = [noise_png(64, 48, 1), noise_png(40, 90, 2), noise_png(300, 200, 3), noise_png(33, 33, 4)]
MAX_IMAGE_BYTES = 300_000
SLOW = 1400  # tokens that take this machine about 5 s: long enough to disconnect in the middle


@pytest.fixture(scope="module")
def server(paper_build, tmp_path_factory):
    process = ServerProcess(paper_build[0], tmp_path_factory.mktemp("serve") / "server.log", "--max-batch", "16",
                            "--batch-wait-ms", "100", "--max-image-bytes", str(MAX_IMAGE_BYTES))
    yield process
    assert process.close() == 0, process.log()
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def pipeline(paper_build):
    with Pipeline.from_dir(paper_build[0], threads=1) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def ask(client, image: bytes, prompt: str, *, max_tokens: int = 8, stream: bool = False):
    """-> (text, tokens, usage, finish_reason, extension) of one greedy request."""
    extra = {"transprune": {"return_kept": True, "return_tokens": True}}
    messages = [user(image, prompt)]
    if not stream:
        response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                  temperature=0, extra_body=extra)
        extension = response.to_dict()["transprune"]
        choice = response.choices[0]
        return (choice.message.content, extension["tokens"], response.usage, choice.finish_reason, extension)
    pieces, finish, usage, extension = [], None, None, None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body=extra):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            extension = chunk.to_dict().get("transprune") or extension
        if chunk.usage is not None:
            usage = chunk.usage
    return "".join(pieces), extension["tokens"], usage, finish, extension


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_openai_client_gets_the_pipelines_greedy_answer(server, client, pipeline, stream):
    reference = pipeline.generate(IMAGES[0], PROMPTS[0], max_new_tokens=8)
    text, tokens, usage, finish, extension = ask(client, IMAGES[0], PROMPTS[0], stream=stream)
    assert (text, tokens, finish) == (reference.text, reference.tokens, "length")
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(reference.input_ids), 8)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert extension["image_tokens"] == reference.image_tokens == [576, 504, 360, 72]
    assert extension["kept"] == reference.kept


def test_a_multi_turn_conversation_is_rendered_as_the_processor_renders_it(server, client, pipeline,
                                                                         tiny_checkpoint):
    from transprune.export.processor import load_processor

    messages = [{"role": "system", "content": "You answer briefly."}, user(IMAGES[1], "What is shown?"),
                {"role": "assistant", "content": "A house."}, {"role": "user", "content": "And the sky?"}]
    as_template_reads = [{"role": "system", "content": [{"type": "text", "text": "You answer briefly."}]},
                         {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "A house."}]},
                         {"role": "user", "content": [{"type": "text", "text": "And the sky?"}]}]
    text = load_processor(tiny_checkpoint).apply_chat_template(as_template_reads, add_generation_prompt=True)
    reference = pipeline.generate(IMAGES[1], text, raw_prompt=True, max_new_tokens=6)
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                              extra_body={"transprune": {"return_tokens": True}})
    assert response.to_dict()["transprune"]["tokens"] == reference.tokens
    assert response.choices[0].message.content == reference.text
    assert response.usage.prompt_tokens == len(reference.input_ids)


def test_sixteen_concurrent_clients_are_all_answered_correctly_in_shared_batches(server, pipeline):
    # 8 different requests (images, prompt lengths, max_tokens) twice each, a third of them streamed
    cases = [(IMAGES[i % 4], PROMPTS[(i % 8) // 2], 4 + i % 5, i % 3 == 0) for i in range(16)]
    references = {(image, prompt, n): pipeline.generate(image, prompt, max_new_tokens=n)
                  for image, prompt, n, _ in cases}
    before = server.metrics()

    def one(case):
        image, prompt, n, stream = case
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        return ask(client, image, prompt, max_tokens=n, stream=stream)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, cases))
    for (image, prompt, n, _), (text, tokens, usage, finish, _) in zip(cases, answers):
        reference = references[(image, prompt, n)]
        assert (text, tokens, usage.completion_tokens) == (reference.text, reference.tokens, n)
    after = server.metrics()
    batches = after["transprune_batch_size_count"] - before["transprune_batch_size_count"]
    requests = after["transprune_batch_size_sum"] - before["transprune_batch_size_sum"]
    assert requests == 16 and batches < 16, "the concurrent requests were never batched"


def big_text() -> str:
    return "word " * 1100  # over the build's 1024 text tokens


def content(*parts) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(parts)}], "temperature": 0,
            "max_tokens": 4}


def image_part(data: bytes, media: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data, media)}}


TEXT = {"type": "text", "text": "What is it?"}
BAD_INPUTS = {
    "malformed JSON": (dict(raw=b'{"model": "tiny-paper", "messages": [{'), 400, "not valid JSON"),
    "another model": ({**body(IMAGES[0], "Hi"), "model": "gpt-4o"}, 404, "not served here"),
    "no image": (body(None, "Hi"), 400, "no image"),
    "two images": (content(image_part(IMAGES[0]), image_part(IMAGES[1]), TEXT), 400, "exactly one image"),
    "a remote image URL": (content({"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}, TEXT),
                           400, "not fetched"),
    "text sent as an image": (content(image_part(b"just some text, not a picture"), TEXT), 400, "not an image"),
    "a truncated PNG": (content(image_part(IMAGES[2][:200]), TEXT), 400, "image"),
    "a PNG declaring 10 gigapixels": (content(image_part(png_header(100_000, 100_000)), TEXT), 400, "Mpx"),
    "an image over --max-image-bytes": (content(image_part(bytes(MAX_IMAGE_BYTES + 1)), TEXT), 413,
                                        "--max-image-bytes"),
    "a body over the limit": (content(image_part(IMAGES[0]), {"type": "text", "text": "x" * (2 << 20)}), 413,
                              "request body"),
    "a prompt over the build's text tokens": (body(IMAGES[0], big_text()), 400, "at most 1024"),
    "the image slot as text": (body(IMAGES[0], "what is <image> here?"), 400, "image slot"),
    "max_tokens over the positions left": ({**body(IMAGES[0], "Hi"), "max_tokens": 5000}, 400, "positions"),
    "max_tokens 0": ({**body(IMAGES[0], "Hi"), "max_tokens": 0}, 400, "max_tokens"),
    "temperature 3": ({**body(IMAGES[0], "Hi"), "temperature": 3}, 400, "temperature"),
    "n 2": ({**body(IMAGES[0], "Hi"), "n": 2}, 400, "one per request"),
    "a tool message": ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "function calling"),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_an_openai_error_and_the_server_goes_on(server, case):
    payload, status, phrase = case
    kwargs = payload if "raw" in payload else {"payload": payload}
    got, _, answer = server.post(**kwargs)
    assert got == status, answer
    error = answer["error"]
    assert phrase in error["message"] and error["type"] and "Traceback" not in error["message"]
    assert server.get("/health")[0] == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
def test_a_body_megabytes_over_the_limit_still_gets_its_413(server, chunked):
    """The server reads and drops what the client is still sending before it answers (up to 8 MiB
    over the limit): answering and closing mid-upload gives the client a broken pipe, not the 413."""
    data = b"{" + b" " * (6 << 20)
    raw = (data[i:i + (64 << 10)] for i in range(0, len(data), 64 << 10)) if chunked else data
    got, _, answer = server.post(raw=raw, headers={"Transfer-Encoding": "chunked"} if chunked else None)
    assert got == 413 and "request body" in answer["error"]["message"]
    assert server.get("/health")[0] == 200


def test_after_the_bad_inputs_the_server_answers_and_never_said_500(server, pipeline):
    status, _, answer = server.post(body(IMAGES[3], PROMPTS[2], max_tokens=5))
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == pipeline.generate(IMAGES[3], PROMPTS[2],
                                                                           max_new_tokens=5).text
    metrics = server.metrics()
    assert not any(name.startswith("transprune_requests_total") and '"5' in name for name in metrics), metrics
    assert metrics['transprune_requests_total{status="400"}'] >= 10


def test_unknown_routes_and_methods_get_json_errors(server):
    status, _, content = server.request("GET", "/v1/completions")
    assert status == 404 and "/v1/chat/completions" in json.loads(content)["error"]["message"]
    status, _, content = server.request("GET", "/v1/chat/completions")
    assert status == 405 and json.loads(content)["error"]["type"] == "invalid_request_error"


def test_models_health_and_metrics_describe_the_server(server):
    status, content = server.get("/v1/models")
    model = json.loads(content)["data"][0]
    assert status == 200 and model["id"] == MODEL and model["transprune"]["multi_turn"] is True
    assert model["transprune"]["image_tokens"] == [576, 504, 360, 72]
    status, content = server.get("/health")
    assert status == 200 and json.loads(content)["status"] == "ok"
    metrics = server.metrics()
    for series in ("transprune_queue_depth", "transprune_running_requests", "transprune_batch_size_count",
                   'transprune_time_to_first_token_seconds_bucket{le="+Inf"}',
                   "transprune_time_per_output_token_seconds_count", 'transprune_requests_total{status="200"}',
                   'transprune_image_tokens_sum{stage="3"}', "transprune_completion_tokens_total"):
        assert series in metrics, series
    answered = metrics['transprune_image_tokens_count{stage="3"}']
    assert answered > 0 and metrics['transprune_image_tokens_sum{stage="3"}'] == 72 * answered
    assert metrics['transprune_image_tokens_sum{stage="0"}'] == 576 * answered


def _request_bytes(server, payload: dict) -> tuple[socket.socket, bytes]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(payload).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    return socket.create_connection((host, int(port)), timeout=30), head + data


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_a_client_that_disconnects_stops_its_generation(server, stream):
    before = server.metrics()
    cancelled = 'transprune_cancelled_total{reason="disconnect"}'
    sock, request = _request_bytes(server, body(IMAGES[0], PROMPTS[0], max_tokens=SLOW, stream=stream))
    sock.sendall(request)
    if stream:
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 200
        assert response.read(6) == b"data: "  # the answer has started
    else:
        server.wait_for(lambda m: m["transprune_running_requests"] == 1, what="the request to start")
    sock.shutdown(socket.SHUT_RDWR)  # the response's file still holds the descriptor: close() alone would not
    sock.close()
    started = time.monotonic()
    after = server.wait_for(lambda m: m.get(cancelled, 0) == before.get(cancelled, 0) + 1 and
                            m["transprune_running_requests"] == 0, what="the generation to stop")
    assert time.monotonic() - started < 4  # all SLOW tokens would take longer
    generated = after["transprune_completion_tokens_total"] - before["transprune_completion_tokens_total"]
    assert generated == 0  # the cancelled request was not counted as answered
    assert 'transprune_requests_total{status="499"}' in after


def test_a_client_that_leaves_while_sending_its_body_is_let_go(server):
    closed = 'transprune_requests_total{status="499"}'
    before = server.metrics().get(closed, 0)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: 100000\r\n\r\n".encode() + b'{"model": "tiny-paper", "messages": [')
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    server.wait_for(lambda m: m.get(closed, 0) == before + 1, what="the half-sent request to be let go")
    assert server.get("/health")[0] == 200  # and nothing was logged as an error (the module checks the log)
