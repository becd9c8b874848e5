"""Random-weight checkpoints of real model shapes for the benchmarks: they time like trained ones."""

from __future__ import annotations

from pathlib import Path

from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import from_config
from splitcore.testing import save_checkpoint, tiny_tokenizer


def model_configs() -> dict[str, PretrainedConfig]:
    """The two shapes measured: GPT-2 small (tied head, 50257 tokens) and a Llama of the same size (GQA)."""
    return {
        "gpt2-small-shaped": GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                                        eos_token_id=50256, bos_token_id=50256),
        "llama-shaped": LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                    num_attention_heads=12, num_key_value_heads=4, vocab_size=32000,
                                    max_position_embeddings=1024, tie_word_embeddings=False,
                                    eos_token_id=31999, bos_token_id=31999),
    }


def build(name: str, config: PretrainedConfig, work: Path) -> tuple[Path, int]:
    """Write a random-weight checkpoint of `config`; its path and parameter count."""
    loaded = from_config(config, seed=0, tokenizer=tiny_tokenizer(), name=name)
    params = sum(p.numel() for p in loaded.layered.model.parameters())
    return save_checkpoint(loaded, work / name), params


def model_dir(name: str, work: Path) -> Path:
    """A benchmark's model by name: 'default' is the shipped checkpoint, any other a shape of `model_configs`
    written under `work`."""
    return DEFAULT_MODEL_DIR if name == "default" else build(name, model_configs()[name], work)[0]
