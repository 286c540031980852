"""Stage ``align`` (``cpsl align``): word-level alignment of the raw sequences, subword expansion, the HDF5 cache."""
