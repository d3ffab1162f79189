"""Benchmarks: `python -m curate.bench.<name>`; each prints ratios against a floor measured in the same run."""
