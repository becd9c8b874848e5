"""Tiny real models for tests and timing benchmarks, built in process (no hub).

Randomly initialised tiny models have near-tied logits, where any rounding
flips the argmax; `initializer_range` is raised so greedy decoding has real
margins and the tests test the split, not the noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from splitcore.loading import LoadedModel, from_config

EOS = "<|endoftext|>"
_SAMPLE_TEXT = (
    "The edge keeps the first layers and the cloud runs the rest. Tokens stay on the device. "
    "Naïve café owners serve crème brûlée; 東京 and Zürich — déjà vu! "
    "A decode step moves one hidden state each way, never the whole sequence. "
) * 20


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE tokenizer with `tokenizers`; EOS is `<|endoftext|>`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def tiny_tokenizer(vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in process on a short multilingual sample."""
    return train_byte_level_bpe([_SAMPLE_TEXT], vocab_size, min_frequency=1)


def tiny_config(family: str, vocab_size: int, layers: int = 4, hidden: int = 64, init: float = 0.3,
                eos_token_id: int | None = None) -> PretrainedConfig:
    """A small config of `family` (gpt2, llama, qwen2 or mistral)."""
    common: dict[str, Any] = {"vocab_size": vocab_size, "initializer_range": init, "eos_token_id": eos_token_id,
              "bos_token_id": eos_token_id, "tie_word_embeddings": family == "gpt2"}
    if family == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
    llama_like: dict[str, Any] = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, **common}
    if family == "llama":
        return LlamaConfig(**llama_like)
    if family == "qwen2":
        return Qwen2Config(**llama_like)
    if family == "mistral":
        return MistralConfig(sliding_window=16, **llama_like)
    raise ValueError(f"no tiny config for {family!r}")


def tiny_model(family: str = "gpt2", layers: int = 4, hidden: int = 64, seed: int = 0) -> LoadedModel:
    """A tiny random model of `family` with a real tokenizer (EOS `<|endoftext|>`, id 0)."""
    tokenizer = tiny_tokenizer()
    config = tiny_config(family, len(tokenizer), layers, hidden, eos_token_id=tokenizer.eos_token_id)
    return from_config(config, seed=seed, tokenizer=tokenizer, name=f"tiny-{family}")


def save_checkpoint(loaded: LoadedModel, path: str | Path) -> Path:
    """Write a LoadedModel as a standard checkpoint directory (safetensors + tokenizer files)."""
    path = Path(path)
    loaded.layered.model.save_pretrained(path, safe_serialization=True)
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(path)
    return path


def reference_tokens(loaded: LoadedModel, prompt: list[int], n: int, min_new_tokens: int = 0) -> list[int]:
    """The unsplit model's greedy continuation of `prompt` by `transformers`' own `generate`: the golden reference
    every split is compared with (at most `n` tokens; fewer if it ends, unless `min_new_tokens` holds it off)."""
    ids = torch.tensor([prompt])
    out = loaded.layered.model.generate(ids, max_new_tokens=n, min_new_tokens=min_new_tokens, do_sample=False,
                                        pad_token_id=0)
    return [int(t) for t in out[0, len(prompt):]]


def reference_text(loaded: LoadedModel, prompt: str | list[int], n: int) -> str:
    """`reference_tokens` of a text (or token ids) prompt, decoded as the edge streams it."""
    assert loaded.tokenizer is not None, "a text reference needs the tokenizer"
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else prompt
    return str(loaded.tokenizer.decode(reference_tokens(loaded, ids, n), skip_special_tokens=True))

