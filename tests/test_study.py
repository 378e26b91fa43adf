"""The study command (`mlp study`, pipeline/study/): the rows of a published
table as DVC experiments run one at a time, compared with the published figures, resumable
after an interruption."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import BIN_DIRECTORY, REPOSITORY, TINY_DATASET, make_tiny_project, run
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError
from pipeline.study.report import CSV_COLUMNS, write_report
from pipeline.study.schema import Measured, Study, StudyRow, check_rows, experiment_name

TINY_STUDY = {
    "title": "Tiny study",
    # Enough epochs that row 2 is still training when the test interrupts it.
    "overrides": ["experiment=atienza_table_1_3_2", f"dataset={TINY_DATASET}", "train.epochs=20"],
    "rows": [
        {
            "row": "1",
            "layers": "32-16",
            "regularizer": "Dropout(0.2)",
            "optimizer": "Adam",
            "relu": True,
            "published_train": 60.0,
            "published_test": 55.0,
        },
        {
            "row": "2",
            "layers": "8",
            "regularizer": "L2(0.001)",
            "optimizer": "SGD",
            "relu": False,
            "published_train": 40.0,
            "published_test": 45.0,
        },
    ],
    "discussion": "Tiny rows, one epoch.",
}


def test_book_notation_becomes_overrides():
    row = StudyRow(
        row="9",
        layers="256-512-256",
        regularizer="Dropout(0.45)",
        optimizer="SGD",
        relu=True,
        published_train=98.21,
        published_test=98.2,
    )
    assert row.overrides() == [
        "optimizer=sgd",
        "model.hidden_units=[256,512,256]",
        "model.activation=relu",
        "model.dropout_rate=0.45",
        "model.l2_weight_decay=0.0",
    ]
    linear = row.model_copy(update={"regularizer": "L2(0.01)", "relu": False, "optimizer": "RMSprop"})
    assert linear.overrides()[0] == "optimizer=rmsprop"
    assert "model.activation=linear" in linear.overrides()
    assert "model.l2_weight_decay=0.01" in linear.overrides()
    assert experiment_name("atienza_table_1_3_2", row) == "atienza-table-1-3-2-row-09"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"regularizer": "Dropout(1.5)"}, "Dropout"),
        ({"optimizer": "Adagrad"}, "optimizer"),
        ({"layers": "256-0"}, "layers"),
        ({"published_test": 150}, "published_test"),
    ],
)
def test_bad_study_rows_are_refused_with_the_reason(tmp_path, change, message):
    study = yaml.safe_load(yaml.safe_dump(TINY_STUDY))
    study["rows"][1].update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match=message):
        Study.load(path)


def test_unknown_study_names_the_known_ones():
    with pytest.raises(ConfigError, match="atienza_table_1_3_2"):
        Study.load(Study.path_of("no_such_study"))


def test_atienza_table_lists_all_18_rows_and_the_listing():
    study = Study.load(Study.path_of("atienza_table_1_3_2"))
    assert [row.row for row in study.rows] == [str(number) for number in range(1, 19)] + ["listing"]
    rows = {row.row: row for row in study.rows}
    assert rows["1"].relu is False and rows["1"].published_test == 92.5
    assert rows["13"].layers == "1024-1024-1024" and rows["13"].regularizer == "Dropout(0.4)"
    assert rows["17"].optimizer == "RMSprop"
    assert rows["listing"].layers == "256-256"
    assert (rows["listing"].published_train, rows["listing"].published_test) == (99.39, 98.5)
    assert sum(row.optimizer == "SGD" for row in study.rows) == 13
    assert [row.layers for row in study.rows[:18]].count("256-256-256") == 12


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPOSITORY / "conf/study").glob("*.yaml")))
def test_every_study_row_composes_and_validates(name):
    check_rows(Study.load(Study.path_of(name)))


def test_the_longer_sgd_study_repeats_rows_of_the_table():
    table = {row.row: row for row in Study.load(Study.path_of("atienza_table_1_3_2")).rows}
    longer = Study.load(Study.path_of("atienza_table_1_3_2_sgd_100_epochs"))
    assert "train.epochs=100" in longer.overrides
    for row in longer.rows:
        assert row == table[row.row]


def test_report_puts_a_measured_row_beside_the_published_figures_and_marks_a_row_not_run(tmp_path):
    study = Study.model_validate(TINY_STUDY)
    measured = Measured(
        measured_train=61.234,
        late_gain=0.5,
        reached_at=None,
        measured_test=54.5,
        seconds=12.4,
        start=1_700_000_000.0,
        end=1_700_000_012.4,
        mlflow_run_id="0f" * 16,
        weights_sha256="ab" * 32,
        machine="Test CPU, 4 cores",
        versions="tensorflow-cpu 2.0, keras 3.0",
    )
    done, not_run = (study.rows[0], measured), (study.rows[1], None)
    write_report([done, not_run], study=study, study_name="tiny", commit="0123456789abcdef", directory=tmp_path)

    with (tmp_path / "table.csv").open(newline="") as stream:
        reader = csv.DictReader(stream)
        records = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert records[0] == {
        "row": "1",
        "layers": "32-16",
        "regularizer": "Dropout(0.2)",
        "optimizer": "Adam",
        "relu": "yes",
        "published_train": "60.00",
        "measured_train": "61.23",
        "train_difference": "+1.23",
        "train_gain_last_epochs": "+0.50",
        "epoch_reaching_published_train": "never",
        "published_test": "55.00",
        "measured_test": "54.50",
        "test_difference": "-0.50",
        "wall_seconds": "12",
        "experiment": "tiny-row-01",
        "mlflow_run_id": "0f" * 16,
        "weights_sha256": "ab" * 32,
    }
    figures = ("measured_train", "train_difference", "measured_test", "test_difference", "wall_seconds")
    assert [records[1][column] for column in figures] == [""] * len(figures)
    assert (records[1]["relu"], records[1]["published_test"], records[1]["experiment"]) == (
        "none",
        "45.00",
        "tiny-row-02",
    )

    lines = (tmp_path / "README.md").read_text().splitlines()
    assert lines[0] == "# Tiny study"
    assert lines[2] == "Written by `mlp study tiny` from the DVC experiments of commit `0123456789ab`"
    assert "- Rows measured: 1 of 2" in lines
    assert (
        "- Mean absolute difference in test accuracy from the publication: 0.50 percentage points; "
        "by optimizer: Adam 0.50 (1 row)"
    ) in lines
    assert "- Last row finished: 2023-11-14 22:13 UTC" in lines
    assert "- Machine: Test CPU, 4 cores" in lines
    measured_cells = "60.00 | 61.23 | +1.23 | +0.50 | never | 55.00 | 54.50 | -0.50 | 12"
    assert f"| 1 | 32-16 | Dropout(0.2) | Adam | yes | {measured_cells} | `tiny-row-01` |" in lines
    missing_cells = " | ".join(["40.00", *["not run"] * 4, "45.00", *["not run"] * 3])
    assert f"| 2 | 8 | L2(0.001) | SGD | none | {missing_cells} | `tiny-row-02` |" in lines
    assert lines[lines.index("## Discussion") + 2] == "Tiny rows, one epoch."
    assert (tmp_path / "test_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def finished_experiment_names(path):
    listed = run([str(BIN_DIRECTORY / "dvc"), "exp", "list", "--name-only"], cwd=path, check=False).stdout
    return set(listed.split())


def row_runs(client, name):
    experiment = client.get_experiment_by_name("atienza-table-1.3.2")
    if experiment is None:
        return []
    # Run names start with the DVC experiment's name, then say what the run is.
    return client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name LIKE '{name} (%'")


@pytest.mark.slow
def test_study_runs_rows_as_experiments_and_resumes_after_an_interruption(tmp_path, tiny_dataset_server):
    path = make_tiny_project(tmp_path / "project", tiny_dataset_server)
    (path / "conf/study/tiny.yaml").write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    run(["git", "add", "-A"], cwd=path)
    run([*git, "commit", "-qm", "tiny study"], cwd=path)
    first, second = (experiment_name("tiny", row) for row in Study.load(path / "conf/study/tiny.yaml").rows)

    # An existing store, so that polling it below never races the first stage creating it.
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    client.search_experiments()

    # The first attempt is interrupted like Ctrl+C in a terminal, while row 2 trains.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("DVC_", "MLFLOW_"))}
    environment.pop("MLP_DATA_MIRROR", None)
    environment["PATH"] = f"{BIN_DIRECTORY}{os.pathsep}{environment.get('PATH', '')}"
    attempt = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "study", "tiny"],
        cwd=path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not row_runs(client, second):
        assert attempt.poll() is None, attempt.stdout.read()
        assert time.monotonic() < deadline, "row 2 did not start in 10 minutes"
        time.sleep(0.2)
    os.killpg(attempt.pid, signal.SIGINT)
    output = attempt.communicate(timeout=180)[0]
    assert attempt.returncode == 130, output
    assert first in finished_experiment_names(path)
    assert second not in finished_experiment_names(path), "row 2 finished before the interruption"
    # The interrupted row's MLflow run is marked KILLED, not left RUNNING.
    assert [mlflow_run.info.status for mlflow_run in row_runs(client, second)] == ["KILLED"], output

    experiment = client.get_experiment_by_name("atienza-table-1.3.2")
    runs = client.search_runs([experiment.experiment_id])
    assert {mlflow_run.info.run_name.split(" (")[0] for mlflow_run in runs} <= {first, second}
    assert all(mlflow_run.info.status in ("FINISHED", "KILLED") for mlflow_run in runs), output
    first_run_ids = {mlflow_run.info.run_id for mlflow_run in runs if mlflow_run.info.run_name.startswith(f"{first} (")}
    assert len(first_run_ids) == 1

    # Run again: row 1 is not trained again, row 2 is.
    resumed = run([sys.executable, "-m", "pipeline.cli", "study", "tiny"], cwd=path)
    assert "1 of 2 rows already run" in resumed.stderr
    assert finished_experiment_names(path) >= {first, second}
    runs = client.search_runs([experiment.experiment_id])
    assert {
        mlflow_run.info.run_id for mlflow_run in runs if mlflow_run.info.run_name.startswith(f"{first} (")
    } == first_run_ids
    finished = [mlflow_run for mlflow_run in runs if mlflow_run.info.status == "FINISHED"]
    assert sorted(mlflow_run.info.run_name.split(" (")[0] for mlflow_run in finished) == [first, second]
    assert not [mlflow_run for mlflow_run in runs if mlflow_run.info.status == "RUNNING"]

    # dvc exp show lists both rows with their configuration.
    shown = run(["dvc", "exp", "show", "--csv", "--param-deps"], cwd=path).stdout
    assert first in shown and second in shown

    # The report: both rows measured against the published figures.
    report = path / "reports/studies/tiny"
    with (report / "table.csv").open() as stream:
        records = list(csv.DictReader(stream))
    assert [record["row"] for record in records] == ["1", "2"]
    by_run = {mlflow_run.info.run_name.split(" (")[0]: mlflow_run for mlflow_run in finished}
    for record in records:
        measured = by_run[record["experiment"]].data.metrics["test_accuracy"] * 100
        assert float(record["measured_test"]) == pytest.approx(measured, abs=0.005)
        assert float(record["test_difference"]) == pytest.approx(measured - float(record["published_test"]), abs=0.01)
        assert float(record["wall_seconds"]) > 0
        assert 0 <= float(record["measured_train"]) <= 100
    assert by_run[second].data.params["model.activation"] == "linear"
    assert by_run[second].data.params["model.l2_weight_decay"] == "0.001"
    assert by_run[first].data.params["model.hidden_units"] == "[32, 16]"
    markdown = (report / "README.md").read_text()
    assert "Rows measured: 2 of 2" in markdown and "Tiny rows, one epoch." in markdown
    assert (report / "test_accuracy.png").read_bytes()[:4] == b"\x89PNG"

    # A third run trains nothing and rewrites the same table.
    again = run([sys.executable, "-m", "pipeline.cli", "study", "tiny"], cwd=path)
    assert "2 of 2 rows already run" in again.stderr
    assert len(client.search_runs([experiment.experiment_id])) == len(runs)
