"""Benchmark and evidence scripts (run as `python benchmarks/<script>.py`); results in results/."""
