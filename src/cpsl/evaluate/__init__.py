"""Stage ``evaluate`` (``cpsl evaluate``): metrics of a run's validation-selected checkpoint, modality reliance."""
