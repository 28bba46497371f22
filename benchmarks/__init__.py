"""Benchmarks: each writes its figures to benchmarks/results/ (run as `python -m benchmarks.<name>`)."""
