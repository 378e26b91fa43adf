"""conf/ composes into the committed params.yaml, every experiment composes, and
invalid values fail with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPOSITORY, run
from dvc.utils.serialize import parse_yaml

from pipeline.config import ConfigError, compose, flatten, load_params, parse_params
from pipeline.git import git

EXPERIMENTS = sorted(path.stem for path in (REPOSITORY / "conf/experiment").glob("*.yaml"))
DATASETS = sorted(path.stem for path in (REPOSITORY / "conf/dataset").glob("*.yaml"))


def default_params() -> dict:
    return yaml.safe_load(compose(config_directory=REPOSITORY / "conf"))


def test_committed_params_file_is_the_default_composition():
    # The committed file, not the working tree's: `dvc exp run -S ...` applies its overrides there.
    committed = git("show", "HEAD:params.yaml", cwd=REPOSITORY)
    assert committed == compose(config_directory=REPOSITORY / "conf").rstrip("\n"), (  # git strips the last newline
        "params.yaml differs from conf/: regenerate it with `make params`"
    )


def test_default_configuration_is_atienzas_listing():
    params = parse_params(compose(config_directory=REPOSITORY / "conf"))
    assert params.model.hidden_units == [256, 256]
    assert params.model.activation == "relu"
    assert params.model.dropout_rate == 0.45
    assert params.optimizer.name == "adam"
    assert params.optimizer.learning_rate == 0.001
    assert (params.train.batch_size, params.train.epochs) == (128, 20)
    assert params.dataset.num_classes == 10
    assert params.mlflow.registered_model_name == "mnist-mlp"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    params = parse_params(compose([f"experiment={experiment}"], config_directory=REPOSITORY / "conf"))
    assert params.train.epochs >= 1


def experiment(name: str, *overrides: str):
    return parse_params(compose([f"experiment={name}", *overrides], config_directory=REPOSITORY / "conf"))


def parameter_count(params) -> int:
    """Weights and biases of the Dense layers: hidden layers, then the output layer."""
    output_units = 1 if params.dataset.task == "binary" else params.dataset.num_classes
    sizes = [params.dataset.num_features, *params.model.hidden_units, output_units]
    return sum(inputs * outputs + outputs for inputs, outputs in zip(sizes[:-1], sizes[1:], strict=True))


def test_experiment_atienza_mnist_is_the_default_and_listing_1_3_2():
    params = experiment("atienza_mnist")
    assert params == parse_params(compose(config_directory=REPOSITORY / "conf"))
    assert (params.dataset.name, params.model.hidden_units, params.model.activation) == ("mnist", [256, 256], "relu")
    assert params.model.dropout_rate == 0.45
    assert (params.optimizer.name, params.optimizer.learning_rate) == ("adam", 0.001)
    assert params.train.loss == "categorical_crossentropy"
    assert (params.train.batch_size, params.train.epochs) == (128, 20)
    assert parameter_count(params) == 269_322


def test_experiment_machinecurve_mnist():
    params = experiment("machinecurve_mnist")
    assert (params.dataset.name, params.dataset.num_classes) == ("mnist", 10)  # not the tutorial's 60,000
    assert (params.model.hidden_units, params.model.activation, params.model.dropout_rate) == ([350, 50], "relu", 0)
    assert params.optimizer.name == "adam"
    assert (params.train.batch_size, params.train.epochs) == (250, 10)
    assert params.dataset.validation_fraction == 0.2


def test_experiment_mlp_mnist_512_768():
    params = experiment("mlp_mnist_512_768")
    assert params.dataset.name == "mnist"
    assert (params.model.hidden_units, params.model.activation, params.model.dropout_rate) == ([512, 768], "relu", 0)
    assert params.optimizer.name == "adam"
    assert (params.train.batch_size, params.train.epochs) == (32, 100)


def test_experiment_kumar_cifar10():
    params = experiment("kumar_cifar10")
    assert (params.dataset.name, params.dataset.num_features) == ("cifar10", 32 * 32 * 3)
    assert (params.model.hidden_units, params.model.activation, params.model.dropout_rate) == ([200, 150], "relu", 0)
    assert (params.optimizer.name, params.optimizer.learning_rate) == ("adam", 0.0005)
    assert (params.train.batch_size, params.train.epochs) == (32, 10)
    assert params.mlflow.registered_model_name == "cifar10-mlp"


def test_experiment_brownlee_pima():
    params = experiment("brownlee_pima")
    assert (params.dataset.name, params.dataset.num_features, params.dataset.task) == ("pima", 8, "binary")
    assert (params.model.hidden_units, params.model.activation, params.model.dropout_rate) == ([12, 8], "relu", 0)
    assert (params.optimizer.name, params.train.loss) == ("adam", "binary_crossentropy")
    assert (params.train.batch_size, params.train.epochs, params.train.early_stopping_patience) == (10, 150, None)
    assert parameter_count(params) == 8 * 12 + 12 + 12 * 8 + 8 + 8 + 1


def test_experiment_atienza_table_1_3_2_trains_on_every_training_image():
    params = experiment("atienza_table_1_3_2", "optimizer=rmsprop")
    assert params.dataset.name == "mnist"
    assert params.dataset.validation_fraction == 0.0
    assert (params.train.batch_size, params.train.epochs, params.train.loss) == (128, 20, "categorical_crossentropy")
    assert params.mlflow.experiment_name == "atienza-table-1.3.2"
    # Keras' default settings for each optimizer the table uses.
    assert (params.optimizer.name, params.optimizer.learning_rate, params.optimizer.momentum) == ("rmsprop", 0.001, 0)
    assert experiment("atienza_table_1_3_2", "optimizer=sgd").optimizer.learning_rate == 0.01


def test_the_command_line_wins_over_an_experiment():
    params = experiment("machinecurve_mnist", "train.epochs=2", "model.dropout_rate=0.1")
    assert (params.train.epochs, params.model.dropout_rate, params.train.batch_size) == (2, 0.1, 250)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes_and_validates(dataset):
    params = parse_params(compose([f"dataset={dataset}"], config_directory=REPOSITORY / "conf"))
    assert params.dataset.name == dataset
    assert params.mlflow.registered_model_name == f"{dataset}-mlp"


def test_the_datasets_describe_their_data():
    cifar = parse_params(compose(["dataset=cifar10"], REPOSITORY / "conf")).dataset
    assert (cifar.format, cifar.num_features, cifar.files["archive"].md5) == (
        "cifar_python",
        3072,
        "c58f30108f718f92721af3b95e74349a",
    )
    assert cifar.files["archive"].size == 170_498_071
    pima = parse_params(compose(["dataset=pima"], REPOSITORY / "conf"))
    assert (pima.dataset.format, pima.dataset.task, pima.dataset.num_features) == ("csv", "binary", 8)
    assert pima.dataset.scaling == "standardize"
    # Its training schedule comes from conf/dataset_train/pima.yaml; the command line still wins.
    assert (pima.train.batch_size, pima.train.early_stopping_patience) == (16, 20)
    overridden = parse_params(compose(["dataset=pima", "train.batch_size=64"], REPOSITORY / "conf"))
    assert overridden.train.batch_size == 64


def test_experiment_files_start_with_the_global_package_line():
    for path in [*(REPOSITORY / "conf/experiment").glob("*.yaml"), *(REPOSITORY / "conf/dataset_train").glob("*.yaml")]:
        assert path.read_text().startswith("# @package _global_\n"), path


def test_overrides_compose_like_dvc_exp_run():
    params = parse_params(
        compose(["model.dropout_rate=0.3", "optimizer=sgd", "optimizer.momentum=0.9"], REPOSITORY / "conf")
    )
    assert params.model.dropout_rate == 0.3
    assert (params.optimizer.name, params.optimizer.momentum) == ("sgd", 0.9)


def with_change(key: str, value) -> str:
    params = default_params()
    *parents, last = key.split(".")
    section = params
    for parent in parents:
        section = section[parent]
    if value is DELETE:
        del section[last]
    else:
        section[last] = value
    return yaml.safe_dump(params)


DELETE = object()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.epochs", 0, "train.epochs = 0: Input should be greater than or equal to 1"),
        ("train.batch_size", -5, "train.batch_size = -5: Input should be greater than or equal to 1"),
        ("model.dropout_rate", 1.0, "model.dropout_rate = 1.0: Input should be less than 1"),
        ("model.dropout_rate", -0.1, "model.dropout_rate = -0.1: Input should be greater than or equal to 0"),
        ("optimizer.learning_rate", 0, "optimizer.learning_rate = 0: Input should be greater than 0"),
        ("optimizer.name", "adamw", "optimizer.name = 'adamw': Input should be 'adam', 'sgd' or 'rmsprop'"),
        ("model.activation", "relux", "model.activation = 'relux': Input should be 'relu', 'tanh'"),
        (
            "model.dropout",
            0.3,
            "model.dropout = 0.3: unknown key; allowed here: hidden_units, activation, dropout_rate",
        ),
        ("train.epochs", DELETE, "train.epochs: missing; set it in conf/ or with -S train.epochs=<value>"),
        ("train.epochs", "???", "no value given (???) for train.epochs"),
        ("dataset.max_train_samples", 5, "dataset.max_train_samples = 5 is too small to stratify: use at least 20"),
        ("train.loss", "hinge", "train.loss = 'hinge': Input should be 'categorical_crossentropy', 'binary_cross"),
        ("train.loss", "binary_crossentropy", "binary_crossentropy does not fit dataset.task multiclass (mnist): use"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as error:
        parse_params(with_change(key, value))
    assert expected in str(error.value)


def test_a_binary_dataset_refuses_categorical_crossentropy():
    with pytest.raises(ConfigError, match="does not fit dataset.task binary .pima.: use binary_crossentropy or mse"):
        experiment("brownlee_pima", "train.loss=categorical_crossentropy")
    assert experiment("brownlee_pima", "train.loss=mse").train.loss == "mse"


def test_momentum_is_refused_for_adam():
    with pytest.raises(ConfigError, match="momentum applies to sgd and rmsprop only"):
        parse_params(with_change("optimizer.momentum", 0.9))


def test_flatten_uses_dotted_keys():
    assert flatten({"model": {"dropout_rate": 0.45, "hidden_units": [256]}, "seed": 1}) == {
        "model.dropout_rate": 0.45,
        "model.hidden_units": [256],
        "seed": 1,
    }


# The stages that import Keras take tens of seconds to start: they run in make test-slow.
KERAS_STAGES = [pytest.param(stage, marks=pytest.mark.slow) for stage in ("train", "evaluate")]


@pytest.mark.parametrize("stage", ["download", "preprocess", *KERAS_STAGES])
def test_stage_refuses_bad_config_before_touching_anything(tmp_path: Path, stage):
    (tmp_path / "params.yaml").write_text(with_change("train.epochs", 0))
    result = subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "train.epochs = 0: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr
    # No data fetched or written, no MLflow store or run created.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_load_params_reports_a_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found: compose it from conf/"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataset=mnistt", "Could not find 'dataset/mnistt' Available options in 'dataset': cifar10 mnist pima"),
        ("model.dropout_rat=0.3", "Could not override 'model.dropout_rat'"),
    ],
)
def test_a_mistyped_override_is_one_line_without_a_traceback(override, expected):
    with pytest.raises(ConfigError) as raised:
        compose([override])
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value) and "Config search path" not in str(raised.value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}")


@pytest.mark.parametrize(
    "name", ["mnist-mlp", "a b", "x.y", "a/b", "a:b", ".", "..", "../x", "a/../b", "./a", "a//b", "a@b"]
)
def test_registered_model_name_rule_is_mlflows_and_addressable(registry, name):
    """The schema restates MLflow's model-name rule (so that the first stages need not import
    MLflow) and refuses what MLflow stores but a models:/ URI cannot address (an '@')."""
    from mlflow.exceptions import MlflowException

    try:
        registry.create_registered_model(name)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    document = default_params()
    document["mlflow"]["registered_model_name"] = name
    try:
        parse_params(yaml.safe_dump(document))
        we_accept = True
    except ConfigError as error:
        we_accept = False
        if "@" in name:
            assert "names cannot contain '@' (models:/<name>@<alias>)" in str(error)
    assert we_accept == (mlflow_accepts and "@" not in name)


def test_the_stages_before_training_do_not_import_mlflow():
    """validate, download and preprocess validate params.yaml without MLflow's second of import time."""
    code = "import sys, pipeline.validate, pipeline.download, pipeline.preprocess; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


BROKEN_FILES = {
    "duplicate key": (b"seed: 42\nseed: 43\n", 'line 2: found duplicate key "seed"'),
    "syntax error": (b"seed: 42\nmodel: {hidden_units: [256\n", "line 3: did not find expected ',' or ']'"),
    "not UTF-8": (b"seed: 42\nmirror: caf\xe9\n", "line 2: not UTF-8"),
}


@pytest.mark.parametrize(("content", "expected"), BROKEN_FILES.values(), ids=BROKEN_FILES)
def test_a_broken_params_file_is_one_line_naming_the_file_and_line(tmp_path: Path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as raised:
        load_params(path)
    assert str(raised.value).startswith(f"{path}, {expected}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("kind", ["directory", "symlink loop"])
def test_something_else_in_place_of_the_params_file_is_one_line(tmp_path: Path, kind):
    path = tmp_path / "params.yaml"
    path.mkdir() if kind == "directory" else path.symlink_to(path)
    with pytest.raises(ConfigError, match=f"^{path}: cannot be read: [^\n]+$"):
        load_params(path)


def test_numbers_mean_to_the_stages_what_they_mean_to_dvc():
    """YAML 1.1 reads 017 as octal 15, YAML 1.2 (DVC's ruamel) as 17."""
    text = with_change("seed", 0).replace("seed: 0\n", "seed: 017\n")
    assert parse_params(text).seed == parse_yaml(text, "params.yaml")["seed"] == 17


@pytest.mark.parametrize("stage", ["validate", "download"])
def test_a_stage_reports_a_duplicate_key_in_one_line(tmp_path: Path, stage):
    (tmp_path / "params.yaml").write_text(with_change("seed", 42) + "seed: 43\n")
    result = run([sys.executable, "-m", f"pipeline.{stage}"], cwd=tmp_path, check=False, PYTHONPATH=str(REPOSITORY))
    assert result.returncode == 1
    assert 'found duplicate key "seed"' in result.stderr and "Traceback" not in result.stderr


BROKEN_CONF = {
    "duplicate key": ("model/mlp.yaml", "dropout_rate: 0.1\n", ', line 12: found duplicate key "dropout_rate"'),
    "syntax error": ("model/mlp.yaml", "activation: [relu\n", ", line 13: did not find expected ',' or ']'"),
    "YAML 1.1 octal": ("config.yaml", "seed: 017\n", ": seed reads as 15 to Hydra but 17 to DVC"),
}


@pytest.mark.parametrize(("file", "added", "expected"), BROKEN_CONF.values(), ids=BROKEN_CONF)
def test_mlp_params_reports_a_broken_conf_file_in_one_line(tmp_path: Path, file, added, expected):
    shutil.copytree(REPOSITORY / "conf", tmp_path / "conf")
    path = tmp_path / "conf" / file
    text = path.read_text()
    path.write_text(text.replace("seed: 42\n", "") + added if file == "config.yaml" else text + added)
    result = run(
        [sys.executable, "-m", "pipeline.cli", "params"], cwd=tmp_path, check=False, PYTHONPATH=str(REPOSITORY)
    )
    assert result.returncode == 1
    assert f"{Path('conf') / file}{expected}" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
