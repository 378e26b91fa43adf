"""Hyperparameter search with Optuna (`mlp search`): every trial is a DVC experiment and an MLflow run.

A search (conf/search/<name>.yaml, pipeline.search.schema) is checked
whole before any trial. K worker processes then share the study through its
storage (pipeline.search.study), each running one trial at a time as
`dvc exp run --temp ... train` (pipeline.search.worker); the same
command on another machine with the same PostgreSQL storage joins the study.
The budget counts completed and pruned trials over all workers. Trial runs are
children of one MLflow run for the study. pipeline.search.coordinator starts
the workers, shows their progress and keeps that run.

Interrupted (Ctrl+C, SIGTERM), the workers stop their trials, marked FAIL; run
the command again and the study continues to its budget. At the end the report
(pipeline.search.report) goes to reports/search/<study>/ and the best
configuration to conf/experiment/<study>_best.yaml (pipeline.search.best).

Inside a trial, the train stage reports to the study through pipeline.search.trial;
pipeline.search.storage holds what the two sides share.
"""

# No imports here: the train stage imports pipeline.search.trial, which runs this file first
# (dvc.yaml lists it among the stage's deps).
