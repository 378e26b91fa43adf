"""Published tables of configurations re-run through the pipeline and compared (`mlp study`).

schema       a study file (conf/study/<name>.yaml), its rows as Hydra overrides, what a row measured
runner       the rows as DVC experiments: queue them, run the queue, read what they measured
report       reports/studies/<name>/: the measured accuracies beside the published ones
coordinator  the whole command: the rows not yet run from the current commit, then the report
"""
