"""Torch-free configuration: the params schema, rows, names, paths, env vars."""
