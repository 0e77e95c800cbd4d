"""Where examples come from: per-split labels and a way to read the chosen examples."""
