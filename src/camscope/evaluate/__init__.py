"""Evaluation: honest metrics on held-out splits, calibration, figures."""
