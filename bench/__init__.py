"""Benchmarks of the engine: ``make bench`` runs ``bench/run.py``."""
