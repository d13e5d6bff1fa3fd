"""Prompts to token ids and ids back to text, with the ``tokenizers`` library only.

The build carries the model's tokenizer as ``tokenizer.json`` (saved by the exporter from the
tokenizer transformers loads, so special-token handling is the same) and its chat template
already rendered around a placeholder: ``before + prompt + after``. No Jinja runs here.
The image slot (one image token in the template) is expanded to the image's image tokens after
tokenising (a fixed count for LLaVA-1.5, one that follows the image's size for LLaVA-NeXT), which
gives the ids the model's processor gives for the expanded text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transprune.errors import TransPruneError

from .build import Build
from .manifest import ManifestError


class PromptError(TransPruneError):
    """A prompt the build cannot take (no image slot, too long)."""


@dataclass
class EncodedBatch:
    input_ids: np.ndarray  # [B, S] int64, left-padded
    attention_mask: np.ndarray  # [B, S] int64
    text_tokens: list[int]  # per sample: prompt tokens other than image tokens


class PromptEncoder:
    def __init__(self, build: Build) -> None:
        from tokenizers import Tokenizer

        section = build.manifest.get("prompt")
        if not isinstance(section, dict):
            raise ManifestError(f"{build.directory}: the manifest has no 'prompt' section; re-export the build")
        path = build.file(section["tokenizer"])
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for any unreadable file
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ManifestError(f"{path}: not a tokenizer the tokenizers library can read ({first_line}); "
                                f"re-export the build") from None
        self.image_token = section["image_token"]
        self.chat = section.get("chat")  # {"before": str, "after": str} or None (no chat template)
        self.image_token_id, self.n_image = build.image_token_id, build.n_image
        if self.tokenizer.token_to_id(self.image_token) != self.image_token_id:
            raise ManifestError(f"{build.directory}: tokenizer.json gives {self.image_token!r} the id "
                                f"{self.tokenizer.token_to_id(self.image_token)}, the model expects "
                                f"{self.image_token_id}; re-export the build")
        self.pad_token_id = build.pad_token_id if build.pad_token_id is not None else 0
        self.max_text_tokens = int(build.limits["max_text_tokens"])

    def render(self, prompt: str, *, raw: bool = False) -> str:
        """The text the model reads: the chat template around ``prompt``, or ``prompt`` itself
        with ``raw`` (it must then hold the image slot where the image goes)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("the prompt is empty; ask something about the image")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (argv, a file)
            raise PromptError(f"the prompt is not valid text (character {exc.start} is an undecodable byte, "
                              f"{prompt[exc.start]!r}); pass the prompt as UTF-8") from None
        slots = prompt.count(self.image_token)
        if raw:
            if slots != 1:
                raise PromptError(f"a raw prompt needs exactly one image slot {self.image_token!r} where the image "
                                  f"goes, this one has {slots}")
            return prompt
        if slots:
            raise PromptError(f"the prompt contains the image slot {self.image_token!r}; the chat template already "
                              f"places the image, so leave it out (or pass the whole text with --raw-prompt)")
        if self.chat is None:
            raise PromptError(f"this model has no chat template; pass the whole text with --raw-prompt, holding "
                              f"one {self.image_token!r} where the image goes")
        return self.chat["before"] + prompt + self.chat["after"]

    def _image_tokens(self, image_tokens: int | None) -> int:
        if image_tokens is None:
            if self.n_image is None:
                raise PromptError("a LLaVA-NeXT build's image-token count follows the image; pass image_tokens "
                                  "(runtime.inputs.ImageInputs counts them)")
            return self.n_image
        if self.n_image is not None and image_tokens != self.n_image:
            raise PromptError(f"this build's images give {self.n_image} image tokens, not {image_tokens}")
        return image_tokens

    def encode(self, prompt: str, *, raw: bool = False, image_tokens: int | None = None) -> list[int]:
        """Token ids of one prompt with its image slot expanded to ``image_tokens`` image tokens
        (default: the build's fixed count)."""
        count = self._image_tokens(image_tokens)
        ids = self.tokenizer.encode(self.render(prompt, raw=raw)).ids
        slots = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(slots) != 1:
            raise PromptError(f"the prompt tokenises to {len(slots)} image slots; it needs exactly one")
        text_tokens = len(ids) - 1
        if text_tokens > self.max_text_tokens:
            raise PromptError(f"the prompt is {text_tokens} text tokens after the chat template, but this build "
                              f"takes at most {self.max_text_tokens}; shorten it or export with a larger "
                              f"--max-text-tokens")
        at = slots[0]
        return ids[:at] + [self.image_token_id] * count + ids[at + 1:]

    def encode_batch(self, prompts: list[str], *, raw: bool = False,
                     image_tokens: list[int] | None = None) -> EncodedBatch:
        """Left-padded ids and masks (decoding appends on the right, so padding goes left);
        ``image_tokens``: per prompt, the count its image gives (default: the build's fixed count)."""
        counts = [self._image_tokens(None)] * len(prompts) if image_tokens is None else list(image_tokens)
        if len(counts) != len(prompts):
            raise PromptError(f"{len(prompts)} prompts but {len(counts)} image-token counts")
        rows = [self.encode(p, raw=raw, image_tokens=n) for p, n in zip(prompts, counts)]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, width - len(row):] = row
            mask[b, width - len(row):] = 1
        return EncodedBatch(ids, mask, [len(r) - n for r, n in zip(rows, counts)])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class TextStream:
    """Turns tokens arriving one by one into text pieces that are safe to print.

    Byte-level tokens may split a UTF-8 character; the decoder then ends in U+FFFD, so such a
    tail is held back until the character completes.
    """

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder, self.ids, self.shown = encoder, [], ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.encoder.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        piece, self.shown = text[len(self.shown):], text
        return piece

    def flush(self) -> str:
        text = self.encoder.decode(self.ids)
        piece = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return piece
