"""Benchmarks of runevents backends against plain baselines run in the same process."""
