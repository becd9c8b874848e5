"""Token agreement, largest logit difference and perplexity change of each activation codec, every cut point.

Usage: python bench/codec_accuracy.py [--model DIR] [--family llama] [--json out.json]

With --model (default: the shipped checkpoint) the text is a public-domain
passage in the model's domain; with --family a tiny random model of that
family is built in process (its perplexity ratio then means little).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from edgesplit.tools.codec_accuracy import measure
from splitcore.defaults import DEFAULT_MODEL_DIR
from splitcore.loading import load_checkpoint
from splitcore.testing import tiny_model

TEXT = ("And God said, Let the waters under the heaven be gathered together unto one place, and let the dry land "
        "appear: and it was so. And God called the dry land Earth; and the gathering together of the waters called "
        "he Seas: and God saw that it was good. And the evening and the morning were the third day.")
PROMPT = "And it came to pass, when the king"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--family", choices=["gpt2", "llama", "qwen2", "mistral"], default=None)
    ap.add_argument("--tokens", type=int, default=32, help="greedy tokens generated per cut")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    loaded = tiny_model(args.family, layers=6) if args.family else load_checkpoint(args.model or DEFAULT_MODEL_DIR)
    tok = loaded.tokenizer
    rows = measure(loaded, tok.encode(TEXT), tok.encode(PROMPT), ["fp32", "fp16", "bf16", "int8"], args.tokens)
    print(f"model {loaded.name}: {loaded.layered.num_layers} blocks; every cut 0 < a < b <= L, head on the edge")
    print(f"{'codec':6} {'cuts':>4} {'greedy agree (mean/min)':>24} {'top-1 agree (min)':>18} "
          f"{'max |dlogit|':>13} {'ppl ratio (max)':>16}")
    for codec in ["fp32", "fp16", "bf16", "int8"]:
        sel = [r for r in rows if r.codec == codec]
        print(f"{codec:6} {len(sel):>4} {statistics.mean(r.greedy_agreement for r in sel):>15.3f} / "
              f"{min(r.greedy_agreement for r in sel):.3f} {min(r.top1_agreement for r in sel):>18.3f} "
              f"{max(r.max_logit_diff for r in sel):>13.4f} {max(r.perplexity_ratio for r in sel):>16.4f}")
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=1))


if __name__ == "__main__":
    main()
