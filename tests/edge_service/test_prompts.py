"""Chat prompts: the tokenizer's own template when it has one, the documented plain one otherwise."""

from __future__ import annotations

import copy

from edge_service.prompts import render_chat
from edge_service.protocol import ChatMessage
from splitcore.loading import LoadedModel

MESSAGES = [ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=[{"type": "text", "text": "Hi"}])]


def test_without_a_template_the_plain_one_is_used(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    assert tok.decode(render_chat(tok, MESSAGES)) == "System: Be brief.\nUser: Hi\nAssistant:"


def test_a_tokenizer_chat_template_is_honoured(models: dict[str, LoadedModel]) -> None:
    tok = copy.deepcopy(models["gpt2"].tokenizer)
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    assert tok.decode(render_chat(tok, MESSAGES)) == "<system>Be brief.<user>Hi<assistant>"
