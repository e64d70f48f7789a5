"""Running a converted model: CUDA-graph replay and backend selection."""
