"""Benchmarks for audit_mw: ``python -m bench.run`` runs them all (see docs/benchmarks.md)."""
