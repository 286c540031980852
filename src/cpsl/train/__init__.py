"""Stage ``train`` (``cpsl train``): one (ablation, seed) run, single process or torchrun DDP, resumable."""
