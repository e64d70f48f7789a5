"""Video decoding and frames."""
