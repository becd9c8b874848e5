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

PLAIN_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[ChatMessage]) -> list[int]:
    """Token ids of the conversation, ready for the assistant's reply."""
    if getattr(tokenizer, "chat_template", None):
        rendered = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
        text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(str(text), add_special_tokens=False)  # the template writes any special tokens
    text = "".join(f"{PLAIN_ROLES[m.role]}: {m.text}\n" for m in messages) + "Assistant:"
    return tokenizer.encode(text, add_special_tokens=False)
