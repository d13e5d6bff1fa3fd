"""A checked conversation -> the prompt text the model reads, holding one image slot.

Builds exported with the template's source (``prompt.chat_template``) render any conversation of
system, user and assistant messages with the checkpoint's own template
(:mod:`transprune.runtime.chat_template`; the exporter checked it against the processor). Older
builds carry only one user turn rendered at export (``prompt.chat``): they serve a single user
message, and anything more is refused with "re-export".
"""

from __future__ import annotations

from ..chat_template import ChatTemplate, ChatTemplateError
from ..prompt import PromptEncoder
from .errors import invalid

REEXPORT = ("this build was exported before multi-turn support and holds only a one-turn chat template; "
            "re-export it with this transprune (transprune-export) to send system messages and multi-turn "
            "conversations, or send one user message")


class Conversations:
    """Renders checked messages (``schema.ChatRequest.messages``) for one build."""

    def __init__(self, encoder: PromptEncoder, template: ChatTemplate | None) -> None:
        self.encoder, self.template = encoder, template

    @property
    def multi_turn(self) -> bool:
        return self.template is not None

    def render(self, messages: list[dict]) -> str:
        """The whole prompt text, with the build's image slot where the template put the image."""
        slot = self.encoder.image_token
        for index, message in enumerate(messages):
            for number, part in enumerate(message["content"]):
                if part["type"] == "text" and slot in part["text"]:
                    # the slot is where image features go: text holding it would misplace the image
                    raise invalid(f"messages[{index}].content[{number}] contains the image slot {slot!r} as text; "
                                  f"leave it out, the chat template places the image",
                                  f"messages[{index}].content")
        if self.template is not None:
            return self._render_template(messages)
        return self._render_one_turn(messages)

    def _render_template(self, messages: list[dict]) -> str:
        try:
            text = self.template.render(messages, add_generation_prompt=True)
        except ChatTemplateError as exc:
            raise invalid(f"{exc}; check the roles and their order (most templates want system first, then user "
                          f"and assistant in turn, ending with user)", "messages") from None
        slots = text.count(self.encoder.image_token)
        if slots != 1:
            raise invalid(f"the model's chat template rendered this conversation with {slots} image slots, not 1 "
                          f"(it places images only in some turns); put the image in the first user message",
                          "messages")
        return text

    def _render_one_turn(self, messages: list[dict]) -> str:
        if self.encoder.chat is None:
            raise invalid("this model has no chat template, so it cannot take messages; use a checkpoint with a "
                          "chat template", "messages")
        if len(messages) != 1 or messages[0]["role"] != "user":
            raise invalid(REEXPORT, "messages")
        texts = [part["text"] for part in messages[0]["content"] if part["type"] == "text"]
        if len(texts) != 1:
            raise invalid(f"the user message has {len(texts)} text parts; this build (exported before multi-turn "
                          f"support) takes one image and one text part: join the texts, or re-export the build "
                          f"with this transprune", "messages")
        if not texts[0].strip():
            raise invalid("the user message's text is empty; ask something about the image", "messages")
        return self.encoder.render(texts[0])
