"""Scores and verdicts shared by evaluate and report."""
