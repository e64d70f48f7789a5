"""GPU suite of the CUDA backend (a package, so that its module names do not clash with
the CPU suite's, e.g. tests/test_ops.py and tests/gpu/test_ops.py)."""
