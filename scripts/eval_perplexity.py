"""Held-out perplexity of a checkpoint on the default model's corpus, unsplit and through the split.

The held-out set is every 20th chapter of the KJV (as `train_default_model.py` splits it); needs Debian's
bible-kjv. Each row is the perplexity over non-overlapping windows; split rows round the activations
through the codec where they cross the link, exactly as the services do.

Usage: python scripts/eval_perplexity.py [--model models/default] [--cut 2:6] [--block 128]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from edgesplit.tools.corpus import encode_stream, read_corpus, split_corpus
from profiling.codec_loss import split_logits
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import load_checkpoint
from splitcore.plan import parse_cut


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--cut", default="2:6")
    ap.add_argument("--block", type=int, default=128)
    args = ap.parse_args()
    loaded = load_checkpoint(args.model)
    _, held = split_corpus(read_corpus())
    data = encode_stream(loaded.tokenizer, held)
    windows = [data[i:i + args.block + 1] for i in range(0, len(data) - 2, args.block)]
    print(f"{args.model}: {len(data):,} held-out tokens in {len(windows)} windows of {args.block}")
    m = loaded.layered
    for codec in ["unsplit", "fp32", "fp16", "bf16", "int8"]:
        nll, count = 0.0, 0
        for w in windows:
            with torch.inference_mode():
                if codec == "unsplit":
                    logits = m.model(w[:-1].unsqueeze(0)).logits[0]
                else:
                    logits = split_logits(loaded, w[:-1], parse_cut(args.cut, m.num_layers, codec=codec))
            nll += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
            count += len(w) - 1
        label = "unsplit" if codec == "unsplit" else f"split {args.cut} {codec}"
        print(f"{label:18} perplexity {math.exp(nll / count):8.3f}")


if __name__ == "__main__":
    main()
