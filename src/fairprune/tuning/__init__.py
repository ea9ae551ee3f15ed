"""Optuna tuning of a fair method's fairness-related parameters: accuracy versus a fairness gap,
on the validation split, in a persistent study that several workers can share."""
