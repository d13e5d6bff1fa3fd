"""What the torch-free runtime needs to turn (image, prompt) into model inputs, written at export.

The runtime has neither transformers nor Jinja, so the exporter, which has both, reduces the
checkpoint's processor to plain data: the tokenizer as transformers loads it (``tokenizer.json``),
the chat template rendered around a placeholder (``before`` + prompt + ``after``), and the image
processor's settings (``transprune.runtime.preprocess.ImagePreprocess``, made by
:mod:`.processor_settings`). It then checks the
reduction: the runtime's ids and pixels for a sample must equal the processor's exactly.
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
