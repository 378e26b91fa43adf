"""Hyperparameter search with Optuna (`mlp search`): every trial a DVC experiment and an MLflow run (docs/search.md)."""

# No imports here: the train stage imports pipeline.search.trial, which runs this file first
# (dvc.yaml lists it among the stage's deps).
