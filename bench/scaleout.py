"""The cloud on Ray Serve against a direct cloud: routing cost per step, 1 and 2 replicas, a killed replica's
recovery (the same as `python -m edgesplit.tools.scaleout`; -h for options).

    python bench/scaleout.py          # the shipped model, all three parts (about 6 minutes)
"""

from edgesplit.tools.scaleout import main

if __name__ == "__main__":
    main()
