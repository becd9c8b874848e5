"""Turning chat messages into a prompt: the tokenizer's chat template, or a plain documented one.

The plain template (for checkpoints without one, such as the default model):

    System: {content}
    User: {content}
    Assistant: {content}
    Assistant:

one line per message, roles capitalised, ending with "Assistant:" for the reply.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from edge_service.protocol import ChatMessage
from splitcore.errors import UserError

PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def check_text_size(texts: list[str], max_bytes: int) -> None:
    """Refuse a prompt over `max_bytes` of UTF-8, or one that is not valid Unicode, before any tokenising.

    Tokenising is the one step whose cost grows with the prompt before its length in tokens is known (a 4 MiB
    prompt took 13 s here), so the size is bounded first, in bytes, and the tokenising itself runs off the
    event loop.

    Raises:
        UserError: over the limit, or a lone surrogate (text no tokenizer can encode).
    """
    size = 0
    for text in texts:
        try:
            size += len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise UserError(f"the prompt is not valid Unicode: {exc.reason} at character {exc.start}") from exc
    if size > max_bytes:
        raise UserError(f"the prompt is {size} bytes; the limit is {max_bytes} (EDGE_MAX_PROMPT_BYTES)")


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[ChatMessage]) -> list[int]:
    """Token ids of the conversation, ready for the assistant's reply."""
    if getattr(tokenizer, "chat_template", None):
        rendered = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
        text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(str(text), add_special_tokens=False)  # the template writes any special tokens
    text = "".join(f"{PLAIN_ROLES[m.role]}: {m.text}\n" for m in messages) + "Assistant:"
    return tokenizer.encode(text, add_special_tokens=False)
