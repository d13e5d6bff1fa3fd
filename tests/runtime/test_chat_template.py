"""``ChatTemplate``: a checkpoint's chat template rendered in Jinja's sandbox exactly as transformers
renders it, and refused when it tries what a hostile template would; the exporter's check that
the two agree, on the tiny checkpoint's processor."""

from __future__ import annotations

import pytest

pytest.importorskip("jinja2")

from transprune.runtime.chat_template import MAX_RENDERED_CHARS, ChatTemplate, ChatTemplateError  # noqa: E402

# LLaVA-1.5's conversation format, written as llava-hf's template lays it out: roles in capitals,
# images first, assistant text inside a {% generation %} block
LLAVA_STYLE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% else %}{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ item['text'] + ' ' }}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# block tags on lines of their own, indented: trim_blocks and lstrip_blocks decide the whitespace
INDENTED = """{% for message in messages %}
    {% if message.role == 'system' %}
<<SYS>>{{ message.content[0].text | tojson }}<</SYS>>
    {% else %}
{% set ns = namespace(n=0) %}
[{{ message.role }}] {% for p in message.content %}{% if p.type == 'image' %}<image>{% set ns.n = ns.n + 1 %}{% else %}{{ p.text }}{% endif %}{% endfor %} ({{ ns.n }})
    {% endif %}
{% endfor %}
{{ bos_token }}{% if add_generation_prompt %}[assistant]{% endif %}"""
VARIABLES = {"bos_token": "<s>", "eos_token": "</s>"}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, text("What is it?")]}],
    [{"role": "system", "content": [text('Say "hi" <b>')]},
     {"role": "user", "content": [{"type": "image"}, text("Describe it: colours, shapes. Ça va? 東京 👋")]},
     {"role": "assistant", "content": [text("A house.")]},
     {"role": "user", "content": [text("And the sky?")]}],
]


@pytest.mark.parametrize("source", [LLAVA_STYLE, INDENTED], ids=["llava-style", "indented"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one turn", "four messages"])
def test_renders_exactly_as_transformers(source, conversation):
    transformers_render = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template
    expected = transformers_render(conversations=[conversation], chat_template=source, add_generation_prompt=True,
                                   **VARIABLES)[0][0]
    assert ChatTemplate(source, VARIABLES).render(conversation) == expected


@pytest.mark.parametrize("source, phrase", [
    ("{{ ''.__class__.__mro__ }}", "refused"),  # climbing to object: the sandbox's classic escape
    ("{{ messages.append(1) }}", "refused"),  # the immutable sandbox: the template cannot change its input
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "refused"),
    ("{{ raise_exception('only user and assistant roles') }}", "only user and assistant roles"),
    ("{% for i in range(10**9) %}{% endfor %}", "Range too big"),  # range is capped
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", f"more than {MAX_RENDERED_CHARS}"),
    ("{{ messages[5]['content'] }}", "no element 5"),
    ("{{ 1 // 0 }}", "failed on this conversation (ZeroDivisionError"),
])
def test_a_hostile_or_failing_template_is_refused_with_a_message(source, phrase):
    with pytest.raises(ChatTemplateError) as caught:
        ChatTemplate(source).render(CONVERSATIONS[0])
    assert phrase in str(caught.value) and "\n" not in str(caught.value)


def test_a_template_that_does_not_compile_says_re_export():
    with pytest.raises(ChatTemplateError, match="does not compile.*re-export"):
        ChatTemplate("{% for %}")


def test_the_manifest_section_is_optional_and_checked():
    assert ChatTemplate.from_manifest({"prompt": {"chat": None}}) is None
    template = ChatTemplate.from_manifest({"prompt": {"chat_template": {"source": LLAVA_STYLE, "variables": {}}}})
    assert template.render(CONVERSATIONS[0]) == "USER: <image>\nWhat is it? ASSISTANT:"
    for bad in ("{{ x }}", {"source": 5}, {"source": "x", "variables": {"bos_token": 1}}):
        with pytest.raises(ChatTemplateError, match="re-export"):
            ChatTemplate.from_manifest({"prompt": {"chat_template": bad}})


def test_the_export_stores_the_template_and_checks_it_against_the_processor(paper_build, tiny_checkpoint):
    from transprune.errors import TransPruneError
    from transprune.export.processor import _check_conversations, load_processor

    _, manifest = paper_build
    section = manifest["prompt"]["chat_template"]
    assert section["variables"]["eos_token"] == "</s>" and "generation" in section["source"]
    processor = load_processor(tiny_checkpoint)
    _check_conversations(processor, manifest)  # what the export ran: passes
    # a template that renders one character differently from the processor's is caught
    altered = {"prompt": {"chat_template": {**section, "source": section["source"].replace("'USER: '", "'USER:'")}}}
    assert altered["prompt"]["chat_template"]["source"] != section["source"]
    with pytest.raises(TransPruneError, match="renders a 1-message conversation differently"):
        _check_conversations(processor, altered)
