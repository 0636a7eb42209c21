"""Carrying a plan out: reading sources in bounded batches, assigning into a model, converting into a new file."""
