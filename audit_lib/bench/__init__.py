"""Benchmarks (``encoder-audit bench ...``): measured, printed and written to var/bench/."""
