"""Benchmarks, one module each (``python -m bench.<name>``), kept out of the test suite; harness: bench.common."""
