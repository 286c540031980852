"""Stage ``prepare`` (``cpsl prepare``): the raw computational sequences, from the CMU server, a mirror or the demo."""
