"""Stage ``report`` (``cpsl report``): seeds aggregated, paired comparisons, Tables 1-2, Figures 2-3."""
