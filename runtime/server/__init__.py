"""transprune.runtime.server: an OpenAI-compatible HTTP server over a build (``transprune-serve``).

Needs the ``serve`` extra (starlette, uvicorn, jinja2); the rest of the runtime does not import it.

- :mod:`.schema`: a request body -> a checked ``ChatRequest`` (every bad input an ``ApiError``);
- :mod:`.chat`: the conversation -> the prompt text, with the checkpoint's chat template;
- :mod:`.service`: a request -> a queued job (image and prompt checked); settings; the model;
- :mod:`.scheduler`: the bounded queue and the worker thread that batches and generates;
- :mod:`.stops`: stop strings on streamed text;
- :mod:`.metrics`: Prometheus text;
- :mod:`.app`: the Starlette routes and server-sent events.
"""

from .app import create_app
from .service import ServeSettings, Service

__all__ = ["ServeSettings", "Service", "create_app"]
