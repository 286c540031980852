"""The mmim baseline of Table 1, self-contained: model.py (model + losses), recipe.py (training recipe), spec.py
(torch-free row and params section), README.md (provenance of every value). Registered in cpsl.baselines.registry."""
