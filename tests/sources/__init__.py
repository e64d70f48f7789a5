"""Video sources and run outputs: source specs (files, folders, globs, URLs, webcams),
threaded decoding with stride/start/end, on-device preprocessing, run folders, per-frame
rows, heatmap videos, and the stream() generator."""
