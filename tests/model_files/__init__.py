"""Saved model files and checkpoints."""
