"""Numba CPU fallbacks, one module per op. Imported lazily: numba compiles on first use."""
