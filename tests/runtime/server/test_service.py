"""``Service.prepare``: a checked request becomes a job (the prompt rendered by the build's chat
template and counted, the image decoded and checked, max_tokens bounded by the positions left),
and a build exported before multi-turn support serves one user turn and says "re-export" for more.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("starlette", reason="the server needs the serve extra: pip install -e '.[serve]'")

from transprune.runtime.pipeline import Pipeline  # noqa: E402
from transprune.runtime.server import ServeSettings, Service  # noqa: E402
from transprune.runtime.server.errors import ApiError  # noqa: E402
from transprune.runtime.server.schema import parse_chat_request  # noqa: E402

from .serving import MODEL, body, noise_png, png_header, user  # noqa: E402

IMAGE = noise_png(50, 40, 9)
CONVERSATION = [{"role": "system", "content": "Be brief."}, user(IMAGE, "What is it?"),
                {"role": "assistant", "content": "A square."}, {"role": "user", "content": "Which colour?"}]


def request(document: dict):
    return parse_chat_request(json.dumps(document).encode(), model=MODEL, max_image_bytes=1 << 20)


def prepare(service: Service, document: dict):
    return service.prepare(request(document), lambda event: None, arrived=0.0)


@pytest.fixture(scope="module")
def service(paper_build):
    with Pipeline.from_dir(paper_build[0], threads=1) as pipeline:
        yield Service(pipeline, ServeSettings(default_max_tokens=32), model_name=MODEL)


@pytest.fixture(scope="module")
def old_service(paper_build, tmp_path_factory):
    """The paper build as an older exporter wrote it: no chat template source in the manifest."""
    old = tmp_path_factory.mktemp("old") / MODEL
    shutil.copytree(paper_build[0], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["prompt"]["chat_template"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with Pipeline.from_dir(old, threads=1) as pipeline:
        yield Service(pipeline, ServeSettings(), model_name=MODEL)


def test_a_conversation_becomes_a_job_with_its_rendered_prompt_and_limits(service):
    job = prepare(service, {"model": MODEL, "messages": CONVERSATION})
    assert job.prompt == "Be brief. USER: <image>\nWhat is it? ASSISTANT: A square.</s>USER: Which colour? ASSISTANT:"
    assert job.prompt_tokens == len(service.pipeline.prompts.encode(job.prompt, raw=True))
    assert (job.image_tokens, job.max_tokens, job.image) == (576, 32, IMAGE)  # the server's default max_tokens
    left = service.pipeline.max_total_tokens - job.prompt_tokens
    assert prepare(service, {**body(IMAGE, "Hi"), "max_tokens": left - 20}).max_tokens == left - 20


@pytest.mark.parametrize("document, phrases", [
    (body(b"\x89PNG\r\n\x1a\n broken", "Hi"), ["the image cannot be used", "PNG"]),
    (body(png_header(1, 20_000), "Hi"), ["the image cannot be used", "aspect"]),
    ({**body(IMAGE, "Hi"), "max_tokens": 1500}, ["positions", "send at most"]),
    (body(IMAGE, "word " * 1100), ["1024", "--max-text-tokens"]),
])
def test_inputs_the_model_cannot_take_are_400_with_the_reason(service, document, phrases):
    with pytest.raises(ApiError) as caught:
        prepare(service, document)
    assert caught.value.status == 400
    for phrase in phrases:
        assert phrase in caught.value.message, caught.value.message


def test_an_older_build_serves_one_user_turn_exactly_as_before(old_service, service):
    assert not old_service.conversations.multi_turn and service.conversations.multi_turn
    job = prepare(old_service, body(IMAGE, "What is it?"))
    assert job.prompt == old_service.pipeline.prompts.render("What is it?") == prepare(service, body(IMAGE, "What is it?")).prompt


@pytest.mark.parametrize("messages", [
    CONVERSATION,
    [{"role": "system", "content": "Be brief."}, user(IMAGE, "What is it?")],
    [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {
        "url": user(IMAGE, "")["content"][0]["image_url"]["url"]}}, {"type": "text", "text": "b"}]}],
], ids=["multi-turn", "a system message", "two text parts"])
def test_an_older_build_says_re_export_for_more_than_one_user_turn(old_service, messages):
    with pytest.raises(ApiError) as caught:
        prepare(old_service, {"model": MODEL, "messages": messages})
    assert caught.value.status == 400 and "re-export" in caught.value.message
