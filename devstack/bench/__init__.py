"""Benchmarks: models in one process, the whole stack, enqueue and backfill rates, the GPU check."""
