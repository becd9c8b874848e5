"""Incremental detokenisation with stop strings.

Pieces come from `tokenizers`' `DecodeStream`, which holds back bytes of an
unfinished UTF-8 character; text that could be the start of a stop string is
held back too, until it is ruled out. Joining every piece returned by `push`
and `flush` gives the generation's text, identical whether streamed or not.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

from splitcore.errors import UnsupportedModelError


class TextStream:
    """Turns token ids into text pieces, one token at a time."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: list[str] | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise UnsupportedModelError("edgesplit streams text with a fast (Rust `tokenizers`) tokenizer")
        self._tokenizer = tokenizer.backend_tokenizer
        self._decoder = DecodeStream(skip_special_tokens=True)
        self._stop = [s for s in (stop or []) if s]
        self._pending = ""
        self._undecoded: list[int] = []  # tokens whose bytes do not yet form whole characters
        self.text = ""  # everything released so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Feed one token; return the text now safe to release ("" when held back)."""
        if self.stopped:
            return ""
        piece = self._decoder.step(self._tokenizer, token_id)
        self._undecoded = [] if piece is not None else [*self._undecoded, token_id]
        self._pending += piece or ""
        hits = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        return self._release(len(self._pending) - self._held_back())

    def flush(self) -> str:
        """Release whatever was held back (the generation ended), dangling bytes as a full decode shows them."""
        if self.stopped:
            return ""
        if self._undecoded:
            self._pending += self._tokenizer.decode(self._undecoded, skip_special_tokens=True)
            self._undecoded = []
        return self._release(len(self._pending))

    def _held_back(self) -> int:
        """Length of the longest suffix of the pending text that starts a stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _release(self, n: int) -> str:
        piece, self._pending = self._pending[:n], self._pending[n:]
        self.text += piece
        return piece
