"""Evaluation, tables, benchmarks and the demo: on top of the library, which never
imports them."""
