"""The CP+SL model: AME (Eq. 1), gated fusion (Eq. 2), heads, the losses (Eq. 3-4), modulation (Eq. 5-6)."""
