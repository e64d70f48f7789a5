"""Conversion: passes, dense islands, whole architectures (reference math and CUDA)."""
