"""Benchmark results: the store, comparisons, CSV and plots."""
