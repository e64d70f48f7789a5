"""Delta ops: the reference math, truncation, and the CUDA kernels against it."""
