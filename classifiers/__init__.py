"""Support-message classifiers: training, evaluation, artifacts and batch prediction.

A leaf package: it never imports `triage`. Its contract (errors, Prediction) is in `base`.
"""
