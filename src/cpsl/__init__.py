"""cpsl: Conflict-aware Penalty + Statistical Loss multimodal sentiment analysis pipeline."""
__version__ = "0.1.0"
