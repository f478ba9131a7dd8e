"""``python scripts/gen_policy.py --agent alice --mount secret --prefix mcp``: print an agent's policy HCL."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["gen-policy", *sys.argv[1:]]))
