"""Text that people type, made safe to put into a prompt.

The tokenizer turns any occurrence of an added token's string (`<|im_start|>`, `<|AUDIO|>`, ...) into that
control token, wherever it appears, user text included. Typed text that contains one could then close the
user's turn and write a system or assistant turn of its own, or add a media placeholder with no media
behind it (which breaks the processor). `neutralise_control_tokens` breaks every such string with a
zero-width space after its first character: it then tokenizes as the ordinary characters it is made of.
`Conversation.model_inputs` applies it to every text part and the system prompt, so the streaming engine
and transformers' reference path, which both render through it, stay token-identical; the text shown to
the user is not changed.
"""

from __future__ import annotations

import json
import re

from model import constants as C
from model.inputs.limits import MAX_TEXT_CHARS, UserInputError

# The released Qwen2.5-Omni tokenizer's added tokens (the same for 7B and 3B; tests check they are all of
# the loaded tokenizer's). `<tool_call>` and the fim tokens are not "special" but are matched all the same.
CONTROL_TOKENS: frozenset[str] = frozenset(json.loads((C.REFERENCE_3B_DIR / "added_tokens.json").read_text()))

# U+200B is a token of its own in Qwen2's byte-level vocabulary and is invisible if it is ever shown.
_BREAK = "\u200b"
# Any `<|name|>` as well, so that a checkpoint with more added tokens of Qwen's usual form is covered too.
_CONTROL = re.compile(
    "|".join(re.escape(t) for t in sorted(CONTROL_TOKENS, key=len, reverse=True)) + r"|<\|[^\s<>|]{1,64}\|>"
)


def neutralise_control_tokens(text: str) -> str:
    """`text` with every control-token string broken so that it tokenizes as plain text."""
    # Breaking one string cannot form another (the break character is in none of them), but matches can
    # overlap in general; repeat until none is left.
    while _CONTROL.search(text):
        text = _CONTROL.sub(lambda m: m.group()[0] + _BREAK + m.group()[1:], text)
    return text


def check_user_text(text: str) -> str:
    """Typed text as it is, or a UserInputError (empty text is allowed here: a turn may be media only)."""
    if len(text) > MAX_TEXT_CHARS:
        raise UserInputError(f"The message is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}.")
    return text
