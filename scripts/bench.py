#!/usr/bin/env python3
"""Delta models against dense baselines on video: the same as ``deltaconvert bench``
(see deltaconvert.bench.matrix for what is measured).

    python scripts/bench.py --quick            # a few minutes on a GPU
    python scripts/bench.py --help

Needs deltaconvert importable: installed (pip install -e .), or from a checkout with
PYTHONPATH=. and --configs-dir configs.
"""
import sys

from deltaconvert.bench.matrix import main

if __name__ == "__main__":
    sys.exit(main())
