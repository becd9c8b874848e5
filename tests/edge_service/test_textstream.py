"""Incremental detokenisation: pieces join to the full text, multi-byte characters and stop strings included."""

from __future__ import annotations

from edge_service.textstream import TextStream
from splitcore.loading import LoadedModel

TEXT = "Naïve café — 東京 and Zürich déjà vu! The edge keeps tokens."


def pieces(stream: TextStream, ids: list[int]) -> list[str]:
    out = [stream.push(t) for t in ids]
    return [*out, stream.flush()]


def test_pieces_join_to_the_decoded_text_with_multibyte_characters(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    ids = tok.encode(TEXT)
    got = pieces(TextStream(tok), ids)
    assert "".join(got) == tok.decode(ids) == TEXT
    assert all("\ufffd" not in p for p in got), "a split UTF-8 character must never be released half-done"


def test_a_byte_level_token_sequence_splitting_a_character_is_held_back(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    ids = tok.encode("東")
    assert len(ids) > 1, "the tiny tokenizer spells this character in several byte tokens"
    stream = TextStream(tok)
    assert [stream.push(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.push(ids[-1]) == "東"


def test_stop_strings_end_the_text_before_them_even_across_tokens(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    stream = TextStream(tok, stop=["Zürich"])
    text = "".join(pieces(stream, tok.encode(TEXT)))
    assert text == "Naïve café — 東京 and " and stream.stopped


def test_text_that_only_looks_like_a_stop_start_is_released_at_the_end(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    stream = TextStream(tok, stop=["edge keeps secrets"])
    assert "".join(pieces(stream, tok.encode(TEXT))) == TEXT and not stream.stopped


def test_a_generation_ending_mid_character_ends_as_a_full_decode_does(models: dict[str, LoadedModel]) -> None:
    tok = models["gpt2"].tokenizer
    ids = tok.encode("ab東")[:-1]  # the last byte of the character is missing
    text = "".join(pieces(TextStream(tok), ids))
    assert text == tok.decode(ids) and text.endswith("\ufffd")
