"""Worked example task metrics (see examples/README.md); a regular package so `metrics` cannot resolve elsewhere."""
