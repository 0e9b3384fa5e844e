"""Benchmarks: each prints the numbers it measured and writes them under results/."""
