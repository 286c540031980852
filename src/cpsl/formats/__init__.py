"""File formats and what their readers accept: .csd, the HDF5 cache, run folders."""
