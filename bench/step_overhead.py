"""Per-step overhead of the split over edge-only and over the transport's floor (the same as
`python -m edgesplit.tools.stepbench`; -h for options).

    python bench/step_overhead.py          # the shipped model (2:6) and a GPT-2-small-shaped 124M model (6:12)
"""

from edgesplit.tools.stepbench import main

if __name__ == "__main__":
    main()
