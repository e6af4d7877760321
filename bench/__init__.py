"""Benchmark harness for pmx: see docs/benchmarks.md."""
