"""Evaluations of the audit methods on the reference zoo (one module per area)."""
