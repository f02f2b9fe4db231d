"""The chat template's text around a user turn, at any point of a conversation.

The first turn carries the system prompt; a later one follows an answer, so it starts by closing it
(`<|im_end|>\n`). A live turn's content is placed between the same head and tail, inside the markers
the processor would put around a video with its sound: `<|vision_bos|><|audio_bos|>` ... `<|audio_eos|><|vision_eos|>`
(either pair alone for a turn with only sound or only pictures).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.inputs.conversation import Conversation, Part, Text

_MARKER = "\x00"  # stands for a turn's content while the template is rendered around it


@dataclass
class TurnTemplate:
    processor: object  # OmniProcessor
    system_prompt: str
    # A live turn's head and tail tokens by (part, first, camera, audio): rendering and tokenising them took
    # about 1.5 ms of each live turn's end, before its first text.
    _live_ids: dict[tuple[str, bool, bool, bool], tuple[int, ...]] = field(default_factory=dict, init=False, repr=False)

    def turn_text(self, parts: list[Part], first: bool) -> str:
        """A whole user turn with its media placeholders, and the assistant's generation prompt."""
        conversation = Conversation(self.system_prompt)
        conversation.add_user(*parts)
        messages, _ = conversation.model_inputs()  # the one place text is made safe for the prompt
        user_turn = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        if first:
            return user_turn
        system_text = self.processor.apply_chat_template(messages[:1], add_generation_prompt=False)
        return "<|im_end|>\n" + user_turn[len(system_text) :]

    def live_head(self, first: bool, camera: bool, audio: bool) -> str:
        """What comes before a live turn's first window."""
        head = self.turn_text([Text(_MARKER)], first).split(_MARKER)[0]
        p = self.processor
        return head + (p.vision_bos_token if camera else "") + (p.audio_bos_token if audio else "")

    def live_tail(self, first: bool, camera: bool, audio: bool) -> str:
        """What follows a live turn's last window, up to the assistant's generation prompt."""
        tail = self.turn_text([Text(_MARKER)], first).split(_MARKER)[1]
        p = self.processor
        return (p.audio_eos_token if audio else "") + (p.vision_eos_token if camera else "") + tail

    def live_ids(self, part: str, first: bool, camera: bool, audio: bool) -> list[int]:
        """The token ids of `live_head` or `live_tail` (`part`: "head" or "tail"), made once per template."""
        key = (part, first, camera, audio)
        if key not in self._live_ids:
            text = self.live_head(first, camera, audio) if part == "head" else self.live_tail(first, camera, audio)
            self._live_ids[key] = tuple(self.processor.tokenizer(text).input_ids)
        return list(self._live_ids[key])
