"""What the torch-free runtime needs to turn (image, prompt) into model inputs, written at export.

The runtime has no transformers, so the exporter reduces the checkpoint's processor to plain
data: the tokenizer as transformers loads it (``tokenizer.json``), the chat template rendered around
a placeholder (``before`` + prompt + ``after``: one user turn, no Jinja needed at run time), the
template's source with the special tokens it reads (``chat_template``: whole conversations, rendered
by ``transprune.runtime.chat_template`` where jinja2 is installed, as the server does), and the image
processor's settings (``transprune.runtime.preprocess.ImagePreprocess``, made by
:mod:`.processor_settings`). It then checks the reduction: the runtime's ids and pixels for a sample
must equal the processor's exactly, and so must its rendering of sample conversations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transprune.errors import TransPruneError

from .processor_settings import describe_anyres_processor, describe_image_processor

TOKENIZER_FILE = "tokenizer.json"
# stands for the user's prompt while the template renders; no template contains it
_PLACEHOLDER = "\u2063TRANSPRUNE-PROMPT\u2063"
_CHECK_PROMPTS = ("What is shown in this picture?", " Describe it: colours, shapes and text ", "Ça va? 東京 👋")


def load_processor(checkpoint: Path):
    """The checkpoint's processor with the PIL image backend (the one the runtime reproduces)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(checkpoint, local_files_only=True, trust_remote_code=False,
                                             backend="pil")
    except (OSError, ValueError) as exc:
        raise TransPruneError(f"cannot load the processor (tokenizer and image processor) from {checkpoint}: "
                              f"{exc}") from None


def export_processor(processor, out: Path, *, anyres: bool) -> dict:
    """Writes ``tokenizer.json`` into ``out``; returns the manifest's ``prompt`` and
    ``image_preprocess`` sections (LLaVA-NeXT: the anyres tiling description)."""
    tokenizer = processor.tokenizer
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    image_token = processor.image_token
    prompt = {"tokenizer": TOKENIZER_FILE, "image_token": image_token, "chat": _rendered_template(processor)}
    template = _template_source(processor)
    if template is not None:
        prompt["chat_template"] = template
    if anyres:  # the model family's decision (ModelFacts.anyres), not a guess from the processor
        image = describe_anyres_processor(processor.image_processor)
    else:
        image = describe_image_processor(processor.image_processor).to_dict()
    return {"prompt": prompt, "image_preprocess": image}


def check_processor(processor, build, sample_image) -> None:
    """Raises if the runtime's ids or pixels differ from the processor's for sample inputs."""
    from transprune.reference import encode_inputs
    from transprune.runtime.inputs import ImageInputs
    from transprune.runtime.prompt import PromptEncoder

    encoder = PromptEncoder(build)
    images = ImageInputs(build)
    prepared = images.prepare([sample_image])
    if encoder.chat is not None:
        expected = encode_inputs(processor, [sample_image] * len(_CHECK_PROMPTS), list(_CHECK_PROMPTS))
        ours = encoder.encode_batch(list(_CHECK_PROMPTS), image_tokens=prepared.image_tokens * len(_CHECK_PROMPTS))
        if not np.array_equal(ours.input_ids, expected["input_ids"].numpy()) or \
                not np.array_equal(ours.attention_mask, expected["attention_mask"].numpy()):
            raise TransPruneError("the runtime's tokenisation differs from the checkpoint's processor for sample "
                                  "prompts; this tokenizer or chat template is not supported yet")
        pixels = expected["pixel_values"].numpy()[:1]
        _check_conversations(processor, build.manifest)
    else:
        pixels = processor.image_processor(images=[sample_image], return_tensors="np")["pixel_values"]
    if build.anyres:  # [1, tiles, 3, H, W] (all of this image's tiles; no batch padding with one image)
        pixels = pixels[0]
    ours = prepared.pixel_values
    if ours.shape != pixels.shape or not np.array_equal(ours, pixels):
        error = np.abs(ours - pixels).max() if ours.shape == pixels.shape else f"shape {ours.shape} vs {pixels.shape}"
        raise TransPruneError(f"the runtime's image preprocessing differs from the checkpoint's processor (max "
                              f"error {error}); this image processor is not supported yet")


def _rendered_template(processor) -> dict | None:
    """The chat template around one user turn (image, then text) with the generation prompt, as
    the text before and after the user's prompt; None when the checkpoint has no template."""
    if not getattr(processor, "chat_template", None):
        return None
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _PLACEHOLDER}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    if text.count(_PLACEHOLDER) != 1 or text.count(processor.image_token) != 1:
        raise TransPruneError("the chat template does not render one prompt and one image slot for a user turn; "
                              "this template is not supported yet")
    before, after = text.split(_PLACEHOLDER)
    return {"before": before, "after": after}


def _template_source(processor) -> dict | None:
    """The template's source and the special tokens ``apply_chat_template`` passes it (``bos_token``
    and the like), for rendering whole conversations at run time; None without a template."""
    source = getattr(processor, "chat_template", None)
    if isinstance(source, dict):  # several named templates: the one apply_chat_template uses by default
        source = source.get("default")
    if not isinstance(source, str) or not source:
        return None
    variables = {name: value for name, value in processor.tokenizer.special_tokens_map.items()
                 if isinstance(value, str)}
    return {"source": source, "variables": variables}


def _check_conversations(processor, manifest: dict) -> None:
    """Raises unless the runtime renders sample conversations (one turn; system, user, assistant,
    user; the image in a later turn) exactly as ``processor.apply_chat_template`` does."""
    from transprune.runtime.chat_template import ChatTemplate, ChatTemplateError

    try:
        template = ChatTemplate.from_manifest(manifest)
    except ChatTemplateError as exc:
        raise TransPruneError(f"the runtime cannot run this checkpoint's chat template ({exc}); this template is "
                              f"not supported yet") from None
    if template is None:
        return
    for conversation in _CHECK_CONVERSATIONS:
        expected = processor.apply_chat_template(conversation, add_generation_prompt=True)
        try:
            ours = template.render(conversation)
        except ChatTemplateError as exc:
            raise TransPruneError(f"the runtime cannot render a sample conversation with this checkpoint's chat "
                                  f"template ({exc}); this template is not supported yet") from None
        if ours != expected:
            raise TransPruneError(f"the runtime renders a {len(conversation)}-message conversation differently from "
                                  f"the checkpoint's processor ({ours!r} vs {expected!r}); this chat template is not "
                                  f"supported yet")


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


_IMAGE = {"type": "image"}
# what the server sends the template: every content a list of parts, the image where the user put it
_CHECK_CONVERSATIONS = (
    [{"role": "user", "content": [_IMAGE, _text(_CHECK_PROMPTS[0])]}],
    [{"role": "system", "content": [_text("You answer briefly.")]},
     {"role": "user", "content": [_IMAGE, _text(_CHECK_PROMPTS[1])]},
     {"role": "assistant", "content": [_text("A red square on a white ground.")]},
     {"role": "user", "content": [_text(_CHECK_PROMPTS[2])]}],
    [{"role": "user", "content": [_text("Hello.")]},
     {"role": "assistant", "content": [_text("Hello! Show me a picture.")]},
     {"role": "user", "content": [_text("Here:"), _IMAGE, _text("what is it?")]}],
)
