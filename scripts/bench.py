#!/usr/bin/env python3
"""Delta models against dense baselines on video (issue 5); see deltaconvert.benchmark.

    python scripts/bench.py --quick            # a few minutes on a GPU
    python scripts/bench.py --help
"""
import sys

from deltaconvert.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
