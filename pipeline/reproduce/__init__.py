"""Reproduction of recorded runs (`mlp reproduce`, `mlp tolerance`): rebuild a run from its lineage and judge it.

record         what a recorded MLflow run says produced it, read back from its lineage artifacts
data           where a reproduction takes the run's data from: DVC when it can, else the data stages
rerun          the run's commit, config and data in a temporary git worktree, `dvc repro --force`, the comparison
verdict        identical, equivalent within tolerance in another environment, or mismatch
tolerance      how far the test metrics move across seeds, measured per configuration in reports/tolerance/
repeatability  the current configuration trained twice in separate processes: the same weights?
"""
