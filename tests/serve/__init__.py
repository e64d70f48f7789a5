"""Serving: the Ray-free StreamEngine (batched rounds, restarts instead of stale state,
errors per stream) and the Ray Serve application on a real local Ray cluster."""
