"""Benchmarks: the DuckDB/dbt warehouse against a plain-pandas cohort build."""
