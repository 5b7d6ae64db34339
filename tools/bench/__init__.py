"""Benchmarks behind `carecard bench NAME`; each prints figures with an in-run baseline."""
