"""Numba kernels for sequential per-terminal and per-card work on the hot path."""
