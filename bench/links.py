"""Every plan against the planner's choice on emulated links (the same as `edgesplit bench`; -h for options).

    python bench/links.py            # both models, LAN, Wi-Fi, LTE and a poor link; about 40 minutes
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesplit.linkbench import main  # noqa: E402

if __name__ == "__main__":
    main()
