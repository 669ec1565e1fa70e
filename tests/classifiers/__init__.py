"""Tests of the classifiers package: datasets, training, evaluation and model artifacts."""
