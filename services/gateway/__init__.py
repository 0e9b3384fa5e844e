"""The gateway: the public Recommender API, per-stage deadlines, fan-out, merging, degradation."""
