"""Latency of a model on a target device: measured, lookup tables, analytic profiles."""
