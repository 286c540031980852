"""Torch building blocks shared by every row's model: the text encoder, min-max normalisation, token masks,
regression heads and losses, deterministic inference, and the row -> model lookup (zoo). cpsl.model (CP+SL) and
each cpsl.baselines.<name> import from here, never from each other, so an edit of one row's model reruns only
that row's jobs (cpsl.runtime.deps.row_files)."""
