"""One cloud's throughput with 1-64 edges against batched `transformers` generation (the same as
`python -m edgesplit.tools.batchbench`; -h for options).

    python bench/batching.py          # the shipped model and a GPT-2-small-shaped 124M model
"""

from edgesplit.tools.batchbench import main

if __name__ == "__main__":
    main()
