"""The paper's Table 1 baselines (MAG, ITHP, MMIM, Self-MM), each implemented from its own paper and trained,
evaluated and reported by the same stages, cache and protocol as the CP+SL rows (see docs/baselines.md)."""
