"""How stages run: engine guard, locks, GPU slots, code deps, atomic file writes."""
