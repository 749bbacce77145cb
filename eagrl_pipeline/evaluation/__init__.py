"""Evaluation: bootstrap metrics, calibration, robustness, generalization, reports."""
