"""Load test of an edge (the same as `edgesplit loadtest`; `python loadtest/run.py -h` for the options).

    python loadtest/run.py --spawn --concurrency 32 --duration-s 60
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesplit.loadtest import main  # noqa: E402

if __name__ == "__main__":
    main()
