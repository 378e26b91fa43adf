"""Hyperparameter search with Optuna (`mlp search`): every trial is a DVC experiment and an MLflow run.

The coordinator runs worker threads that share the study through its storage (a journal file, or PostgreSQL
between machines); a worker runs one trial at a time as `dvc exp run --temp ... train`, whose train stage
reports each epoch to the study (trial). How a search runs, resumes after an interruption and reports:
docs/search.md.
"""

# No imports here: the train stage imports pipeline.search.trial, which runs this file first
# (dvc.yaml lists it among the stage's deps).
