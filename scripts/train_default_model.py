"""Train the small default checkpoint that ships in models/default/.

Corpus: the King James Version of the Bible (1611; its copyright has long
expired, as Debian's copyright file for `bible-kjv-text` states), obtained
from Debian's `bible-kjv` package: `apt-get install bible-kjv`, whose `bible`
program prints the text. Every 20th chapter is held out for perplexity.

Tokenizer: byte-level BPE trained with `tokenizers`. Model: GPT-2
architecture trained with plain PyTorch (nanoGPT-style loop). Seeded; the
output is a standard Hugging Face checkpoint directory.

Usage: python scripts/train_default_model.py --out models/default
       python scripts/train_default_model.py --out models/draft --tokenizer models/default --layers 2 \
           --hidden 128 --heads 4    # the speculation draft: same token ids, a fifth of the weights
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from edgesplit.tools.corpus import HOLDOUT_EVERY, encode_stream, read_corpus, split_corpus
from splitcore.testing import train_byte_level_bpe


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> PreTrainedTokenizerFast:
    tok = train_byte_level_bpe(texts, vocab_size)
    tok.model_max_length = 1024
    tok.save_pretrained(out)
    return tok


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, data: torch.Tensor, block: int) -> float:
    """Held-out perplexity over non-overlapping windows of `block` tokens."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(data) - 1, block):
        chunk = data[start : start + block + 1]
        if len(chunk) < 2:
            break
        out = model(chunk[:-1].unsqueeze(0), labels=chunk[:-1].unsqueeze(0))
        n = len(chunk) - 2  # labels are shifted inside the model
        total_nll += out.loss.item() * n
        total_tokens += n
    return math.exp(total_nll / total_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/default"))
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--block", type=int, default=128, help="training context, tokens")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="reuse this checkpoint's tokenizer instead of training one (a draft model must share the "
                         "model's token ids: --tokenizer models/default)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train_text, held_text = split_corpus(read_corpus())
    if args.tokenizer is not None:
        tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
        tok.save_pretrained(args.out)
    else:
        tok = train_tokenizer(train_text, args.vocab_size, args.out)
    train_ids, held_ids = encode_stream(tok, train_text), encode_stream(tok, held_text)
    print(f"corpus: {len(train_ids):,} training tokens, {len(held_ids):,} held-out tokens")

    config = GPT2Config(
        vocab_size=len(tok), n_positions=1024, n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    gen = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    model.train()
    for _step in (bar := tqdm(range(args.steps), desc="training")):
        starts = torch.randint(0, len(train_ids) - args.block - 1, (args.batch,), generator=gen)
        x = torch.stack([train_ids[s : s + args.block] for s in starts])  # (batch, block)
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")

    ppl = perplexity(model, held_ids, args.block)
    minutes = (time.monotonic() - started) / 60
    print(f"held-out perplexity: {ppl:.2f} (trained {minutes:.1f} min)")
    model.generation_config.pad_token_id = tok.eos_token_id
    model.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    card = {
        "corpus": "King James Version of the Bible, Debian package bible-kjv (public domain text)",
        "holdout": f"every {HOLDOUT_EVERY}th chapter",
        "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
        "parameters": sum(p.numel() for p in model.parameters()),
        "heldout_perplexity_fp32": round(ppl, 3), "train_minutes": round(minutes, 1),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "training.json").write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
