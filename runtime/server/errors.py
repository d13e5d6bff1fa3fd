"""``ApiError``: every refusal the server answers with, as OpenAI's error object.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}`` and raise their own
exception by status (400 BadRequestError, 404 NotFoundError, 413/422 as APIStatusError, 429
RateLimitError, 503/504 as server errors they may retry), so every bad input maps to one of these
with a message that names the problem and the fix, never to a 500 with a traceback.
"""

from __future__ import annotations

INVALID = "invalid_request_error"
TOO_LARGE = "request_too_large"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
UNAVAILABLE = "service_unavailable"
TIMEOUT = "timeout"
INTERNAL = "server_error"


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message naming the problem and the fix,
    OpenAI's error ``type``, the request field at fault (``param``) and extra response headers."""

    def __init__(self, status: int, message: str, *, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.code, self.headers = code, dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None) -> ApiError:
    """A 400 for a request field with a wrong value."""
    return ApiError(400, message, param=param)
