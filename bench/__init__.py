"""Benchmarks for codetr-serve: load generator, TorchServe driver, sweeps, report (see docs/tuning.md)."""
