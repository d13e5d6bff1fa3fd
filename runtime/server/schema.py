"""An OpenAI chat-completions request body -> a checked :class:`ChatRequest`, or an :class:`ApiError`.

Only what OpenAI's schema says a client may send is read, every value is checked for type and
range, and every refusal names the field (``param``) and what to send instead. Fields this server
cannot honour (tools, logprobs, n > 1, penalties) are refused rather than ignored, so a client never
gets an answer to a question it did not ask; fields that do not change the answer (``user``,
``metadata``, ``store``, ...) are ignored.

The image comes inline, as a ``data:image/...;base64,`` URL. A remote ``http(s)`` URL is refused:
fetching arbitrary URLs from a server is a request-forgery hole, so the client sends the bytes.
The size limit is applied to the encoded length before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from .errors import NOT_FOUND, TOO_LARGE, ApiError, invalid

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 256
MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_SEED = 2**63  # the sampler takes 0 .. 2**63 - 1
DATA_URL_HELP = "send the image inline as a data URL: data:image/png;base64,<the file's bytes in base64>"


@dataclass
class ChatRequest:
    """A checked request. ``messages``: ``[{"role", "content": [parts]}]`` with parts
    ``{"type": "text", "text"}`` and exactly one ``{"type": "image"}`` (in a user message), the
    roles as the chat template reads them (``developer`` becomes ``system``)."""

    model: str
    messages: list[dict]
    image: bytes
    max_tokens: int | None = None  # None: the server's default, bounded by the positions left
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    return_kept: bool = False
    return_tokens: bool = False
    extras: dict = field(default_factory=dict)


def parse_chat_request(body: bytes, *, model: str, max_image_bytes: int) -> ChatRequest:
    """Parses and checks ``body``; ``model``: the name this server answers to."""
    document = _json(body)
    if not isinstance(document, dict):
        raise invalid(f"the request body is JSON {_kind(document)}, not an object; send "
                      f'{{"model": "{model}", "messages": [...]}}')
    name = document.get("model")
    if not isinstance(name, str) or not name:
        raise invalid(f'"model" is missing or not a string; send "model": "{model}"', "model")
    if name != model:
        raise ApiError(404, f"the model {name!r} is not served here; this server serves {model!r} "
                            f"(GET /v1/models)", type=NOT_FOUND, param="model", code="model_not_found")
    _refuse_unsupported(document)
    messages, image_url = _messages(document.get("messages"))
    request = ChatRequest(model=name, messages=messages, image=_image_bytes(image_url, max_image_bytes))
    max_tokens = document.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = document.get("max_tokens"), "max_tokens"
    if max_tokens is not None:
        request.max_tokens = _integer(max_tokens, param, low=1)
    if document.get("temperature") is not None:
        request.temperature = _number(document["temperature"], "temperature", low=0.0, high=2.0)
    if document.get("top_p") is not None:
        request.top_p = _number(document["top_p"], "top_p", low=0.0, high=1.0, low_open=True)
    if document.get("seed") is not None:
        request.seed = _integer(document["seed"], "seed", low=0, high=MAX_SEED - 1)
    request.stop = _stops(document.get("stop"))
    request.stream = _boolean(document.get("stream", False), "stream")
    options = document.get("stream_options")
    if options is not None:
        if not request.stream:
            raise invalid('"stream_options" applies to streamed answers only; add "stream": true or leave it out',
                          "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage", "continuous_usage_stats"}:
            raise invalid('"stream_options" must be an object like {"include_usage": true}', "stream_options")
        request.include_usage = _boolean(options.get("include_usage", False), "stream_options.include_usage")
    extension = document.get("transprune")
    if extension is not None:
        if not isinstance(extension, dict) or set(extension) - {"return_kept", "return_tokens"}:
            raise invalid('"transprune" must be an object with the flags "return_kept" and "return_tokens", e.g. '
                          '{"return_kept": true}', "transprune")
        request.return_kept = _boolean(extension.get("return_kept", False), "transprune.return_kept")
        request.return_tokens = _boolean(extension.get("return_tokens", False), "transprune.return_tokens")
    return request


# -- the body ------------------------------------------------------------------------------------

def _json(body: bytes):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"the request body is not UTF-8 (byte {exc.start} is {body[exc.start:exc.start + 1]!r}); "
                      f"send JSON encoded as UTF-8") from None
    if not text.strip():
        raise invalid("the request body is empty; send a JSON object with \"model\" and \"messages\"")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                      f"send a JSON object") from None
    except RecursionError:  # json's C parser counts its depth and raises this, it does not crash
        raise invalid("the request body nests arrays or objects thousands deep; a chat request nests about 5 "
                      "levels") from None
    except ValueError as exc:  # an integer of thousands of digits, say
        raise invalid(f"the request body cannot be read as JSON ({exc}); send a JSON object") from None


def _kind(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _refuse_unsupported(document: dict) -> None:
    n = document.get("n")
    if n is not None and (_integer(n, "n", low=1) != 1):
        raise invalid(f'"n": {n} asks for {n} answers; this server gives one per request: send "n": 1 or leave it '
                      f'out, and send {n} requests', "n")
    if document.get("logprobs") or document.get("top_logprobs") is not None:
        raise invalid("log probabilities are not supported by this server; leave out logprobs and top_logprobs",
                      "logprobs")
    for name in ("tools", "functions"):
        if document.get(name):
            raise invalid(f"{name} (function calling) is not supported by this server; leave out {name!r}", name)
    for name in ("tool_choice", "function_call"):
        if document.get(name) not in (None, "none", "auto"):
            raise invalid(f"{name} is not supported by this server; leave it out", name)
    fmt = document.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise invalid('only plain text answers are supported; leave out response_format or send {"type": "text"}',
                      "response_format")
    for name in ("frequency_penalty", "presence_penalty"):
        value = document.get(name)
        if value is not None and _number(value, name, low=-2.0, high=2.0) != 0:
            raise invalid(f"{name} is not supported by this server; send 0 or leave it out", name)
    if document.get("logit_bias"):
        raise invalid("logit_bias is not supported by this server; leave it out", "logit_bias")
    for name in ("audio", "prediction"):
        if document.get(name) is not None:
            raise invalid(f"{name} is not supported by this server; leave it out", name)
    modalities = document.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise invalid('this server answers in text only; send "modalities": ["text"] or leave it out', "modalities")


# -- messages ------------------------------------------------------------------------------------

def _messages(value) -> tuple[list[dict], str]:
    """-> (messages as the chat template reads them, the one image's URL)."""
    if not isinstance(value, list) or not value:
        raise invalid('"messages" must be a non-empty array of {"role", "content"} objects', "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"{len(value)} messages; this server takes at most {MAX_MESSAGES}", "messages")
    messages, images = [], []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} is {_kind(message)}, not an object with \"role\" and \"content\"", where)
        role = message.get("role")
        if role not in ROLES:
            hint = " (tool and function messages need function calling, which this server does not do)" \
                if role in ("tool", "function") else ""
            raise invalid(f"{where}.role {role!r} is not one of system, developer, user, assistant{hint}",
                          f"{where}.role")
        if message.get("tool_calls") or message.get("function_call"):
            raise invalid(f"{where} holds tool calls; function calling is not supported by this server",
                          f"{where}.tool_calls")
        parts = []
        for number, part in enumerate(_content(message.get("content"), where)):
            if part["type"] == "image":
                images.append((index, number, role, part.pop("url")))
            parts.append(part)
        messages.append({"role": ROLES[role], "content": parts})
    if not images:
        raise invalid("the conversation has no image; this model answers about one image: add a content part "
                      '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} to a user '
                      "message", "messages")
    if len(images) > 1:
        places = ", ".join(f"messages[{i}].content[{j}]" for i, j, _, _ in images)
        raise invalid(f"the conversation has {len(images)} images ({places}); this model takes exactly one image "
                      f"per conversation: send the others in separate conversations", "messages")
    index, number, role, url = images[0]
    if ROLES[role] != "user":
        raise invalid(f"messages[{index}] is a {role} message with an image; the image goes in a user message",
                      f"messages[{index}].content[{number}]")
    return messages, url


def _content(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": _text(content, f"{where}.content")}]
    if not isinstance(content, list):
        raise invalid(f"{where}.content must be a string or an array of parts "
                      f'({{"type": "text", ...}}, {{"type": "image_url", ...}}), not {_kind(content)}',
                      f"{where}.content")
    parts = []
    for number, part in enumerate(content):
        at = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _text(part.get("text"), f"{at}.text")})
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise invalid(f'{at}.image_url must be {{"url": "data:image/...;base64,..."}}', f"{at}.image_url")
            parts.append({"type": "image", "url": url})
        else:
            raise invalid(f"{at} has type {kind!r}; this server reads parts of type text and image_url", at)
    return parts


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{where} must be a string, not {_kind(value)}", where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate sent as a \\ud800 escape
        raise invalid(f"{where} holds an unpaired surrogate (\\u{ord(value[exc.start]):04x}) at character "
                      f"{exc.start}, which is not text; send valid Unicode", where) from None
    return value


# -- the image -----------------------------------------------------------------------------------

def _image_bytes(url: str, max_bytes: int) -> bytes:
    head = url[:64].strip().lower()
    if head.startswith(("http://", "https://")):
        raise invalid(f"remote image URLs are not fetched by this server (a server that fetches what it is sent "
                      f"can be made to reach any address); {DATA_URL_HELP}", "messages")
    if not head.startswith("data:"):
        scheme = head.split(":", 1)[0] if ":" in head else "a path"
        raise invalid(f"the image URL is {scheme!r}, not a data URL; {DATA_URL_HELP}", "messages")
    meta, comma, data = url.partition(",")
    if not comma:
        raise invalid(f"the image's data URL has no ',' before its data; {DATA_URL_HELP}", "messages")
    fields = meta[len("data:"):].split(";")
    media = fields[0].strip().lower()
    if "base64" not in (f.strip().lower() for f in fields[1:]):
        raise invalid(f"the image's data URL is not base64 (';base64' is missing); {DATA_URL_HELP}", "messages")
    if media and not media.startswith("image/") and media != "application/octet-stream":
        raise invalid(f"the data URL's media type is {media!r}, not an image; {DATA_URL_HELP}", "messages")
    # checked before decoding: base64 holds 3 bytes in 4 characters
    if (len(data) // 4) * 3 - 2 > max_bytes:
        raise ApiError(413, f"the image is about {len(data) * 3 // 4:,} bytes, over this server's limit of "
                            f"{max_bytes:,} bytes (--max-image-bytes); downscale or recompress it",
                       type=TOO_LARGE, param="messages")
    try:
        image = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        try:  # base64 wrapped in lines (base64.encodebytes, `base64` without -w0) is still base64
            image = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"the image's data URL is not valid base64 ({exc}); {DATA_URL_HELP}", "messages") from None
    if not image:
        raise invalid(f"the image's data URL holds no data; {DATA_URL_HELP}", "messages")
    if len(image) > max_bytes:
        raise ApiError(413, f"the image is {len(image):,} bytes, over this server's limit of {max_bytes:,} bytes "
                            f"(--max-image-bytes); downscale or recompress it", type=TOO_LARGE, param="messages")
    return image


# -- scalars -------------------------------------------------------------------------------------

def _integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 16.0 from a client that writes every number as a float
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer, not {value!r}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise invalid(f"{name} {value} is out of range; send an integer {bounds}", name)
    return value


def _number(value, name: str, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise invalid(f"{name} must be a number, not {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        bounds = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise invalid(f"{name} {value} is out of range; send a number in {bounds}", name)
    return float(value)


def _boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{name} must be true or false, not {value!r}", name)
    return value


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid('"stop" must be a string or an array of strings', "stop")
    if len(stops) > MAX_STOPS:
        raise invalid(f'"stop" has {len(stops)} strings; send at most {MAX_STOPS}', "stop")
    for stop in stops:
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise invalid(f"stop string {stop!r} must be 1 to {MAX_STOP_CHARS} characters", "stop")
        _text(stop, "stop")
    return tuple(dict.fromkeys(stops))
