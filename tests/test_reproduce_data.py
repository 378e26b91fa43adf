"""How `mlp reproduce` reads `dvc status` to decide whether the data stages' outputs can be pulled
rather than recomputed. The pull itself runs for real in tests/test_team.py."""

from __future__ import annotations

from pipeline.reproduce.rerun import blocking_changes

MISSING = {
    "download": [{"changed outs": {"data/raw/mnist": "deleted"}}],
    "preprocess": [
        {"changed deps": {"data/raw/mnist": "deleted"}},
        {"changed outs": {"data/processed/mnist": "not in cache"}},
    ],
}
# At commits from before each dataset had folders of its own.
MISSING_BEFORE_DATASET_FOLDERS = {"download": [{"changed outs": {"data/raw": "deleted"}}]}


def test_outputs_that_are_only_missing_can_be_pulled():
    assert blocking_changes(MISSING) == []
    assert blocking_changes(MISSING_BEFORE_DATASET_FOLDERS) == []
    assert blocking_changes({}) == []


def test_a_changed_param_code_file_or_command_means_recomputing():
    status = {
        "download": [
            {"changed deps": {"pipeline/download.py": "modified"}},
            {"changed outs": {"data/raw/mnist": "deleted"}},
        ],
        "preprocess": [{"changed deps": {"params.yaml": {"seed": "modified"}}}, "changed command"],
    }
    assert blocking_changes(status) == [
        "download: deps pipeline/download.py modified",
        "preprocess: deps params.yaml seed modified",
        "preprocess: changed command",
    ]


def test_a_data_output_that_exists_but_differs_is_not_pulled_over():
    assert blocking_changes({"preprocess": [{"changed outs": {"data/processed/mnist": "modified"}}]}) == [
        "preprocess: outs data/processed/mnist modified"
    ]
