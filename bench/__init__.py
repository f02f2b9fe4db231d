"""Benchmarks of the streaming engine against transformers' own pipeline (`python -m bench.latency`)."""
