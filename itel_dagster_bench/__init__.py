"""Benchmarks: measured figures, printed; never asserted by tests."""
