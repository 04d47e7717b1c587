"""Evaluation: benchmark runner, pass@k / maj@k / avg@n metrics with bootstrap CIs, reports."""
