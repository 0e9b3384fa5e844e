"""Ranking: feature hydration for (user, candidates) and scoring by the ranker on Triton."""
