"""Arrays written by hand into data/processed/ are checked where the train and evaluate stages read them:
a bad file fails the stage in one line naming the file, what is wrong and the command that rebuilds it,
before any MLflow run starts or any model is registered."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPOSITORY, TINY_DATASET, make_tiny_project, run
from mlflow.tracking import MlflowClient

from pipeline.config import DatasetConfig
from pipeline.errors import DataError
from pipeline.splits import Split, load_splits, save_split

REBUILD = "rebuild it with `dvc repro --force preprocess`"
# The splits each stage reads.
STAGE_SPLITS = {"train": ["train", "validation"], "evaluate": ["test"]}
STAGE_OF = {split: stage for stage, splits in STAGE_SPLITS.items() for split in splits}


def with_first(array: np.ndarray, value) -> np.ndarray:
    changed = array.copy()
    changed.flat[0] = value
    return changed


def empty(inputs, labels):
    return inputs[:0], labels[:0]


def without_class_3(inputs, labels):
    return inputs[labels != 3], labels[labels != 3]


def with_first_input(value):
    return lambda inputs, labels: (with_first(inputs.astype(np.float32), value), labels)


# The case's name: (split, how its (inputs, labels) are spoilt, what the message says is wrong)
CASES = {
    "label 10": ("train", lambda x, y: (x, with_first(y, 10)), "labels from 0 to 10, expected class ids 0 to 9"),
    "label -1": ("test", lambda x, y: (x, with_first(y, -1)), "labels from -1 to 9, expected class ids 0 to 9"),
    "string inputs": ("train", lambda x, y: (x.astype(str), y), "inputs and int64 labels, expected numbers"),
    "float labels": ("train", lambda x, y: (x, y.astype(float)), "float64 labels, expected numbers and integer"),
    "narrower validation": ("validation", lambda x, y: (x[:, :-1], y), "examples of 783 values, expected 784"),
    "narrower test": ("test", lambda x, y: (x[:, :-1], y), "examples of 783 values, expected 784"),
    "empty train": ("train", empty, "holds no examples, expected at least one"),
    "empty validation": ("validation", empty, "holds no examples, expected at least one"),
    "empty test": ("test", empty, "holds no examples, expected at least one"),
    "class missing": ("train", without_class_3, "no example of class 3, expected every one of the 10 classes"),
    "NaN train": ("train", with_first_input(np.nan), "NaN or infinite inputs"),
    "infinite test": ("test", with_first_input(np.inf), "NaN or infinite inputs"),
}


def dataset_config(**changes) -> DatasetConfig:
    """MNIST's dataset config (28x28 = 784 features, 10 classes), with `changes`."""
    values = yaml.safe_load((REPOSITORY / "conf/dataset/mnist.yaml").read_text())
    return DatasetConfig.model_validate({**values, **changes})


def write_good_splits(directory) -> None:
    for name in ("train", "validation", "test"):
        labels = np.arange(30) % 10
        save_split(directory / f"{name}.npz", Split(np.full((30, 784), 7, np.uint8), labels))


def spoil(path, corrupt) -> None:
    """Replace the split at `path` by `corrupt(inputs, labels)`, written as a user would with NumPy."""
    with np.load(path) as arrays:
        inputs, labels = corrupt(arrays["inputs"], arrays["labels"])
    np.savez(path, inputs=inputs, labels=labels)


@pytest.mark.parametrize(("split", "corrupt", "expected"), CASES.values(), ids=CASES)
def test_a_bad_split_is_refused_in_one_line_naming_the_file_and_the_rebuild(tmp_path, split, corrupt, expected):
    write_good_splits(tmp_path)
    spoil(tmp_path / f"{split}.npz", corrupt)
    with pytest.raises(DataError) as raised:
        load_splits(tmp_path, STAGE_SPLITS[STAGE_OF[split]], dataset_config())
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / split}.npz holds ")
    assert expected in message
    assert message.endswith(REBUILD)


def test_good_splits_load_as_written(tmp_path):
    write_good_splits(tmp_path)
    training, validation = load_splits(tmp_path, ["train", "validation"], dataset_config())
    assert training.inputs.shape == (30, 784) and training.inputs.dtype == np.uint8
    np.testing.assert_array_equal(validation.labels, np.arange(30) % 10)


def test_validation_may_be_empty_when_none_is_held_out(tmp_path):
    write_good_splits(tmp_path)
    spoil(tmp_path / "validation.npz", empty)
    _, validation = load_splits(tmp_path, ["train", "validation"], dataset_config(validation_fraction=0.0))
    assert validation.inputs.shape == (0, 784)


def test_a_class_missing_from_the_test_split_is_accepted(tmp_path):
    # Only training must see every class; a subsampled test split may lack one.
    write_good_splits(tmp_path)
    spoil(tmp_path / "test.npz", lambda x, y: (x[y != 3], y[y != 3]))
    (test,) = load_splits(tmp_path, ["test"], dataset_config())
    assert 3 not in test.labels


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory, tiny_dataset_server):
    """A tiny project after `dvc repro`: one finished run, one registered model version."""
    path = make_tiny_project(tmp_path_factory.mktemp("split_checks"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    return path, MlflowClient(f"sqlite:///{path / 'mlflow.db'}")


@pytest.mark.slow
@pytest.mark.parametrize(("split", "corrupt", "expected"), CASES.values(), ids=CASES)
def test_the_stage_refuses_a_bad_split_before_any_run_or_registration(trained_project, split, corrupt, expected):
    path, store = trained_project
    experiments = [experiment.experiment_id for experiment in store.search_experiments()]
    runs_before = store.search_runs(experiments)
    versions_before = store.search_model_versions()
    file = path / "data/processed" / TINY_DATASET / f"{split}.npz"
    original = file.read_bytes()
    try:
        spoil(file, corrupt)
        result = run(["python", "-m", f"pipeline.{STAGE_OF[split]}"], cwd=path, check=False)
    finally:
        file.write_bytes(original)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1
    assert f"data/processed/{TINY_DATASET}/{split}.npz holds " in errors[0]
    assert expected in errors[0] and errors[0].endswith(REBUILD)
    runs_after = store.search_runs(experiments)
    assert [each.info.status for each in runs_after] == [each.info.status for each in runs_before] == ["FINISHED"]
    assert len(store.search_model_versions()) == len(versions_before) == 1


@pytest.mark.slow
def test_a_batch_larger_than_the_training_rows_is_refused_before_any_run(trained_project):
    path, store = trained_project
    params_file = path / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    rows = len(np.load(path / "data/processed" / TINY_DATASET / "train.npz")["labels"])
    params["train"]["batch_size"] = rows + 1
    try:
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        result = run(["python", "-m", "pipeline.train"], cwd=path, check=False)
    finally:
        params_file.write_text(original)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and f"train.batch_size = {rows + 1} is larger than the {rows} rows" in errors[0]
    assert errors[0].endswith(f"use at most {rows}")
    assert len(store.search_model_versions()) == 1
