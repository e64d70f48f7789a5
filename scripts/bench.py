#!/usr/bin/env python3
"""Delta models against dense baselines on video (issue 5); see deltaconvert.benchmark.

    python scripts/bench.py --quick            # a few minutes on a GPU
    python scripts/bench.py --help

Runs from a checkout without installing the package (the GPU machine).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deltaconvert.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
