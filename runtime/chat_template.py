"""A checkpoint's own Jinja chat template, rendered at run time for whole conversations.

The exporter stores the processor's template source in the manifest (``prompt.chat_template``:
``{"source": str, "variables": {name: str}}``, the variables being the tokenizer's special tokens
that ``apply_chat_template`` passes, such as ``bos_token``) and checks that this module renders
sample conversations exactly as ``processor.apply_chat_template`` does
(``transprune.export.processor.check_processor``). Builds from before that carry only the one-turn
rendering (``prompt.chat``) and have no template here.

A build may come from anywhere, so its template is untrusted code: it runs in Jinja's
``ImmutableSandboxedEnvironment`` (no attribute starting with ``_``, no mutation of the values it is
given, ``range`` capped), with only plain JSON values in its context, and its output is capped at
:data:`MAX_RENDERED_CHARS`. jinja2 is imported when a template is first compiled, so the runtime
needs it only to serve multi-turn conversations.

A conversation here is what the processor's template reads: ``[{"role": str, "content": [part,
...]}]`` with parts ``{"type": "text", "text": str}`` and ``{"type": "image"}``.
"""

from __future__ import annotations

import json
from datetime import datetime

from transprune.errors import TransPruneError

# A LLaVA conversation the build can take is at most max_text_tokens (1024 by default) tokens of a
# few characters each; this is far above it and bounds what a hostile template can allocate.
MAX_RENDERED_CHARS = 4 << 20
MIN_JINJA = (3, 1, 6)  # older jinja2 releases have known sandbox escapes


class ChatTemplateError(TransPruneError):
    """A conversation the template cannot render, or a template this runtime cannot run."""


def template_section(manifest: dict) -> dict | None:
    """The manifest's ``prompt.chat_template`` ({"source", "variables"}) or None (an older build, or
    a checkpoint without a template); a malformed one is refused."""
    section = (manifest.get("prompt") or {}).get("chat_template")
    if section is None:
        return None
    if not (isinstance(section, dict) and isinstance(section.get("source"), str)
            and isinstance(section.get("variables", {}), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in section.get("variables", {}).items())):
        raise ChatTemplateError("the manifest's prompt.chat_template is not {source: text, variables: {name: text}}; "
                                "re-export the build")
    return section


class ChatTemplate:
    """``ChatTemplate(source, variables).render(conversation)`` -> the text the model reads."""

    def __init__(self, source: str, variables: dict[str, str] | None = None) -> None:
        self.source, self.variables = source, dict(variables or {})
        self._template = _compile(source)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "ChatTemplate | None":
        section = template_section(manifest)
        return None if section is None else cls(section["source"], section.get("variables"))

    def render(self, conversation: list[dict], *, add_generation_prompt: bool = True) -> str:
        import jinja2

        context = {**self.variables, "messages": conversation, "add_generation_prompt": add_generation_prompt,
                   "tools": None, "documents": None}
        pieces, size = [], 0
        try:
            # generate(), not render(): a template that loops to produce gigabytes is stopped early
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise ChatTemplateError(f"the chat template rendered more than {MAX_RENDERED_CHARS} characters "
                                            f"for this conversation; shorten the conversation")
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:  # raise_exception() in the template, a sandbox refusal, a bad filter
            raise ChatTemplateError(f"the model's chat template refused this conversation: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - untrusted code: whatever it raises is the template failing
            raise ChatTemplateError(f"the model's chat template failed on this conversation "
                                    f"({type(exc).__name__}: {exc})") from None
        return "".join(pieces)


def _compile(source: str):
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ChatTemplateError("multi-turn chat needs jinja2 to render the model's chat template; "
                                "pip install 'transprune[serve]'") from None
    version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if version < MIN_JINJA:
        raise ChatTemplateError(f"jinja2 {jinja2.__version__} has known sandbox escapes; the model's chat template "
                                f"is untrusted code, so upgrade: pip install 'jinja2>=3.1.6'")

    class GenerationBlock(Extension):
        """``{% generation %}...{% endgeneration %}`` marks assistant text for transformers' masks;
        rendering keeps the body as it is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """Templates keep loop state in ``namespace()``; names starting with ``_`` are refused so
        that a template cannot reach Python internals through one."""

        def __init__(*args, **kwargs):  # noqa: N805 - jinja's own Namespace takes self this way
            self, args = args[0], args[1:]
            values = dict(*args, **kwargs)
            for name in values:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, values)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(str(message))

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers' filter: plain json.dumps (Jinja's own escapes HTML characters)
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    # the settings transformers renders templates with, so that whitespace comes out the same
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(str(fmt)),
                       dict=lambda *args, **kwargs: dict(*args, **kwargs))  # a function: no class to climb from
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the build's chat template does not compile ({exc}); re-export the build") from None
