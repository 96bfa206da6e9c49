"""Evaluation: seeded sampling, classifiers, UnlearnCanvas-style metrics."""
