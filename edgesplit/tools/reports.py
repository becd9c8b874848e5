"""What every benchmark and load test writes at the end: its JSON report, with the arguments it ran with."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_report(args: argparse.Namespace, report: dict) -> None:
    """Write `report` to `args.out` (parents made), recording `args` under "args" (paths as text)."""
    report["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
