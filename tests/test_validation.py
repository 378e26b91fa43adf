"""Every bad value is refused when params.yaml is loaded, before any data is read
or any MLflow run is created, with a message that names the problem first."""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from conftest import make_tiny_project, run
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError, compose, parse_params

# (dotted key, bad value, words the first line of the message must hold)
BAD_INPUTS = [
    ("optimizer.learning_rate", math.inf, "optimizer.learning_rate = inf"),
    ("optimizer.learning_rate", math.nan, "optimizer.learning_rate = nan"),
    ("optimizer.learning_rate", -0.1, "optimizer.learning_rate = -0.1"),
    ("optimizer.learning_rate", 0, "optimizer.learning_rate = 0"),
    ("seed", 4294967296, "seed = 4294967296"),
    ("seed", -1, "seed = -1"),
    ("seed", "abc", "seed = 'abc'"),
    ("mlflow.registered_model_name", "bad/name", "cannot contain '/' or ':'"),
    ("mlflow.registered_model_name", "   ", "mlflow.registered_model_name = '   '"),
    ("mlflow.registered_model_name", "a:b", "cannot contain '/' or ':'"),
    ("mlflow.experiment_name", "", "mlflow.experiment_name = ''"),
    ("mlflow.experiment_name", " padded ", "must not be blank or start or end with spaces"),
    ("model.dropout_rate", 1.0, "model.dropout_rate = 1.0"),
    ("model.dropout_rate", -0.1, "model.dropout_rate = -0.1"),
    ("model.dropout_rate", math.nan, "model.dropout_rate = nan"),
    ("model.hidden_units", [256, 0], "model.hidden_units.1 = 0"),
    ("model.activation", "relu6", "model.activation = 'relu6'"),
    ("model.kernel_initializer", "ones", "model.kernel_initializer = 'ones'"),
    ("model.l2_weight_decay", math.inf, "model.l2_weight_decay = inf"),
    ("model.l2_weight_decay", -1.0, "model.l2_weight_decay = -1.0"),
    ("optimizer.name", "adamw", "optimizer.name = 'adamw'"),
    ("optimizer.momentum", 0.9, "momentum applies to sgd and rmsprop only"),
    ("train.batch_size", 0, "train.batch_size = 0"),
    ("train.epochs", 0, "train.epochs = 0"),
    ("train.loss", "hinge", "train.loss = 'hinge'"),
    ("train.loss", "binary_crossentropy", "train.loss binary_crossentropy does not fit dataset.task multiclass"),
    ("train.early_stopping_patience", 5, None),  # with validation_fraction 0, below
    ("dataset.validation_fraction", 1.0, "dataset.validation_fraction = 1.0"),
    ("dataset.class_names", [str(number) for number in range(9)], "dataset.class_names has 9 names for 10 classes"),
    ("foo", 1, "foo = 1: unknown key"),
    ("model.foo", 1, "model.foo = 1: unknown key"),
    ("dataset.max_train_samples", 5, "too small to stratify"),
    ("dataset.files.train_images.sha256", "xyz", "dataset.files.train_images.sha256 = 'xyz'"),
    ("dataset.urls", ["ftp://example.org/"], "dataset.urls.0 = 'ftp://example.org/'"),
    # A boolean is not a number, though Python counts True as 1.
    ("train.epochs", True, "train.epochs = True: Input should be a valid integer"),
    ("seed", True, "seed = True: Input should be a valid integer"),
    ("optimizer.learning_rate", True, "optimizer.learning_rate = True: Input should be a valid number"),
    ("train.batch_size", 128.0, "train.batch_size = 128.0: Input should be a valid integer"),
    ("dataset.class_names", ["a"] * 10, "dataset.class_names must be unique: 'a' is repeated"),
    # Names reach MLflow, terminals and logs: no line break, bell or escape sequence.
    ("mlflow.experiment_name", "a\nb", "mlflow.experiment_name = 'a\\nb': must be printable"),
    ("mlflow.experiment_name", "bell\a", "mlflow.experiment_name = 'bell\\x07': must be printable"),
    ("mlflow.registered_model_name", "\x1b[31mred", "mlflow.registered_model_name = '\\x1b[31mred': must be printable"),
    ("dataset.class_names", [*"012345678", "9\n"], "dataset.class_names.9 = '9\\n': must be printable"),
    # Limits that pass the types and then crash TensorFlow or exhaust memory.
    ("train.batch_size", 2**31, "train.batch_size 2147483648 and model.hidden_units [256, 256] need about"),
    ("model.hidden_units", [100_000_000], "train.batch_size 128 and model.hidden_units [100000000] need about"),
    ("dataset.max_train_samples", 100, "train.batch_size 128 is larger than the at most 90 training rows"),
]


def with_value(params: dict, key: str, value) -> dict:
    changed = copy.deepcopy(params)
    *sections, last = key.split(".")
    target = changed
    for section in sections:
        target = target[section]
    target[last] = value
    if key == "train.early_stopping_patience":
        changed["dataset"]["validation_fraction"] = 0.0
    return changed


@pytest.fixture(scope="module")
def default_params() -> dict:
    return yaml.safe_load(compose())


def test_the_list_holds_thirty_distinct_bad_inputs():
    assert len({(key, repr(value)) for key, value, _ in BAD_INPUTS}) >= 30


@pytest.mark.parametrize(("key", "value", "expected"), BAD_INPUTS, ids=[f"{k}={v!r}" for k, v, _ in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_problem_first(default_params, key, value, expected):
    text = yaml.safe_dump(with_value(default_params, key, value))
    with pytest.raises(ConfigError) as raised:
        parse_params(text)
    message = str(raised.value)
    first_line = message.splitlines()[0]
    assert first_line.startswith("params.yaml: "), message
    assert expected is None or expected in first_line, message
    if expected is None:
        assert "early_stopping_patience needs a validation set" in first_line
    # One or two lines, without the whole parameter dump.
    assert len(message.splitlines()) <= 2 and len(message) < 400, message


def test_several_problems_are_listed_one_per_line(default_params):
    params = with_value(with_value(default_params, "seed", -1), "train.epochs", 0)
    with pytest.raises(ConfigError, match="has 2 invalid parameters") as raised:
        parse_params(yaml.safe_dump(params))
    assert len(str(raised.value).splitlines()) == 3


# Every bad input goes through the same load_params() call at the start of the
# stage, which the fast tests check one by one: the stage is checked on one of each kind.
STAGE_SAMPLE = [
    entry
    for entry in BAD_INPUTS
    if (entry[0], repr(entry[1]))
    in {
        ("optimizer.learning_rate", "nan"),
        ("seed", "4294967296"),
        ("mlflow.registered_model_name", "'bad/name'"),
        ("train.early_stopping_patience", "5"),
        ("model.foo", "1"),
        ("dataset.files.train_images.sha256", "'xyz'"),
    }
]


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value", "expected"), STAGE_SAMPLE, ids=[f"{k}={v!r}" for k, v, _ in STAGE_SAMPLE])
def test_the_train_stage_refuses_it_before_creating_a_run(trained_project, key, value, expected):
    assert len(STAGE_SAMPLE) == 6
    path, store = trained_project
    runs_before = len(store.search_runs(experiment_ids=[e.experiment_id for e in store.search_experiments()]))
    original = (path / "params.yaml").read_text()
    try:
        (path / "params.yaml").write_text(yaml.safe_dump(with_value(yaml.safe_load(original), key, value)))
        result = run(["python", "-m", "pipeline.train"], cwd=path, check=False)
    finally:
        (path / "params.yaml").write_text(original)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "params.yaml" in result.stderr
    runs_after = len(store.search_runs(experiment_ids=[e.experiment_id for e in store.search_experiments()]))
    assert runs_after == runs_before


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("validation"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    return path, MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
