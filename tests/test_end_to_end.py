"""The real `dvc repro` and `dvc exp run` on a copy of this repository, trained on
the tiny synthetic dataset for one epoch, checked through DVC's own commands and
MLflow's client.

The tests in this module share one project and run in file order: the no-op
and partial re-run checks depend on the state the first `dvc repro` left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN_DIRECTORY, TINY_DATASET, free_port, make_tiny_project, run
from mlflow.tracking import MlflowClient

STAGES = ("validate", "download", "preprocess", "train", "evaluate")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    result = run(["dvc", "repro"], cwd=path)
    return path, result


@pytest.fixture(scope="module")
def client(project):
    path, _ = project
    return MlflowClient(f"sqlite:///{path / 'mlflow.db'}")


def artifact_paths(client, run_id, folder=None):
    """Every file the run logged, in every folder."""
    for item in client.list_artifacts(run_id, folder):
        yield from artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]


def metrics_of(path):
    return json.loads((path / "reports/metrics.json").read_text())


def test_repro_runs_every_stage_and_writes_outputs(project):
    path, result = project
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.stdout
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (path / "data/raw" / TINY_DATASET / name).is_file()
    for split in ("train", "validation", "test"):
        with np.load(path / f"data/processed/{TINY_DATASET}/{split}.npz") as arrays:
            assert arrays["inputs"].shape[1] == 784
            assert arrays["inputs"].dtype == np.uint8  # raw pixels: the model scales them
    assert (path / "data/model/model.keras").stat().st_size > 0
    for report in ("samples.png", "confusion_matrix.png", "learning_curves.png", "class_counts.json"):
        assert (path / "reports" / report).stat().st_size > 0
    assert "Trainable params: 269,322" in (path / "reports/model_summary.txt").read_text()
    # get_config() is enough for Keras to rebuild the same network.
    import keras

    config = json.loads((path / "reports/model_config.json").read_text())
    assert keras.Sequential.from_config(config).count_params() == 269_322
    assert (path / "reports/architecture.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.glob("data/raw/**/*.part")), "no temporary download may remain"
    # DVC-managed data stays out of git.
    data = (f"data/raw/{TINY_DATASET}/t10k-labels-idx1-ubyte.gz", f"data/processed/{TINY_DATASET}/test.npz")
    for name in (*data, "data/model/model.keras"):
        run(["git", "check-ignore", "-q", name], cwd=path)


def test_the_test_metrics_are_the_saved_keras_models(project):
    """One model, one truth: the file DVC tracks (and MLflow serves) gives the evaluated predictions."""
    import keras

    from pipeline.classifier import class_ids

    path, _ = project
    model = keras.models.load_model(path / "data/model/model.keras")
    with np.load(path / f"data/processed/{TINY_DATASET}/test.npz") as arrays:
        predicted = class_ids(model.predict(arrays["inputs"], verbose=0))
        accuracy = float(np.mean(predicted == arrays["labels"]))
    assert metrics_of(path)["test"]["accuracy"] == accuracy
    rows = (path / "reports/confusion_matrix.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == [str(index) for index in predicted]


def test_a_normal_run_prints_no_error_looking_lines(project):
    from pipeline.hardware import cpu

    _, result = project
    output = result.stdout + result.stderr
    for line in output.splitlines():
        assert not re.match(r"[EF]\d{4} ", line), line  # TensorFlow's C++ error lines
        assert " ERROR" not in line and "Traceback" not in line, line
    assert "use_unbounded_threadpool" not in output
    assert "All log messages before absl::InitializeLog()" not in output
    assert "can be interpreted in multiple ways" not in output  # MLflow guessing a dataset's source
    # TensorFlow prints its oneDNN notice at any log level, on the CPUs where it turns oneDNN on itself; the
    # pipeline leaves oneDNN as installed there (turning it off changes the weights).
    if not {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"} & set(cpu()["isa"]):
        assert "oneDNN custom operations" not in output


def test_lock_file_records_every_stage_with_hashes(project):
    path, _ = project
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["train"]["params"]["params.yaml"]["model"]["dropout_rate"] == 0.45
    # The split checks read the dataset's shape and classes: train declares the whole section.
    assert lock["stages"]["train"]["params"]["params.yaml"]["dataset"]["input_shape"] == [28, 28]
    for stage in STAGES:
        for output in lock["stages"][stage].get("outs", []):
            assert len(output["md5"].removesuffix(".dir")) == 32


def test_metrics_hold_test_scores_and_the_mlflow_run_id(project, client):
    path, _ = project
    metrics = metrics_of(path)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["loss"] > 0
    per_class = json.loads((path / "reports/per_class_metrics.json").read_text())
    assert set(per_class) == {str(label) for label in range(10)}
    run_data = client.get_run(metrics["mlflow_run_id"]).data
    assert run_data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_mlflow_run_holds_params_epoch_metrics_artifacts_and_lineage(project, client):
    path, _ = project
    run_id = metrics_of(path)["mlflow_run_id"]
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    params = mlflow_run.data.params
    assert params["model.dropout_rate"] == "0.45"
    assert params["dataset.name"] == TINY_DATASET
    assert params["optimizer.name"] == "adam"
    assert params["train.epochs"] == "1"
    assert params["model.parameter_count"] == "269322"
    # What the user chose: no unset values; the files' names, sizes and checksums are lineage, the class names a table.
    assert "None" not in params.values(), sorted(key for key, value in params.items() if value == "None")
    assert not [key for key in params if key.startswith(("dataset.files", "dataset.class_names"))]
    class_table = json.loads(Path(client.download_artifacts(run_id, "class_names.json")).read_text())
    assert class_table["data"] == [[index, str(index)] for index in range(10)]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [point.step for point in client.get_metric_history(run_id, metric)] == [1]
    for metric in ("test_loss", "test_accuracy", "test_f1_macro"):
        assert metric in mlflow_run.data.metrics
    # Per-class scores are one table artifact, not three metrics per class.
    assert not [name for name in mlflow_run.data.metrics if "_class_" in name]
    artifacts = set(artifact_paths(client, run_id))
    for artifact in (
        "config/params.yaml",
        "architecture/model_summary.txt",
        "architecture/model_config.json",
        "architecture/architecture.png",
        # At the root: MLflow's compare page shows only top-level artifacts side by side.
        "confusion_matrix.png",
        "learning_curves.png",
        "evaluation/classification_report.txt",
        "evaluation/confusion_matrix.csv",
        "evaluation/per_class_metrics.json",
        "evaluation/metrics.json",
    ):
        assert artifact in artifacts
    assert [artifact for artifact in artifacts if "per_class" in artifact] == ["evaluation/per_class_metrics.json"]
    assert not [artifact for artifact in artifacts if artifact.startswith("evaluation/") and artifact.endswith(".png")]
    commit = run(["git", "rev-parse", "HEAD"], cwd=path).stdout.strip()
    assert mlflow_run.data.tags["git.commit"] == commit
    # Artifacts live beside the store, not in the stage's working directory.
    assert mlflow_run.info.artifact_uri.startswith((path / "mlartifacts").as_uri())


# What MLflow itself sets (run name, description, source, user, logged models) is not counted.
SYSTEM_TAG_PREFIX = "mlflow."


def user_tags(mlflow_run) -> dict[str, str]:
    return {key: value for key, value in mlflow_run.data.tags.items() if not key.startswith(SYSTEM_TAG_PREFIX)}


def test_a_run_has_a_few_one_line_tags_and_its_lineage_in_one_json_artifact(project, client, tiny_dataset_server):
    """The run overview shows what people filter by; everything else is lineage/lineage.json."""
    path, _ = project
    run_id = metrics_of(path)["mlflow_run_id"]
    tags = user_tags(client.get_run(run_id))
    assert len(tags) <= 12, sorted(tags)
    assert not [key for key, value in tags.items() if "\n" in value or len(key) > 40], tags
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    assert tags["dataset"] == TINY_DATASET
    # Hydra's form: the config group choice, then only the keys that differ from that composition.
    assert tags["config.overrides"] == f"dataset={TINY_DATASET} train.epochs=1"
    assert client.get_run(run_id).info.run_name == f"dataset={TINY_DATASET} epochs=1"
    assert tags["git.commit"] == run(["git", "rev-parse", "HEAD"], cwd=path).stdout.strip()
    assert tags["git.dirty"] == "false"
    assert tags["model.weights_sha256"] == metrics_of(path)["weights_sha256"]
    lineage = json.loads(Path(client.download_artifacts(run_id, "lineage/lineage.json")).read_text())
    assert lineage["code"]["commit"] == tags["git.commit"] and lineage["code"]["dirty"] is False
    # One digest over the raw files, as `sha256sum <files> | sha256sum` computes it in data/raw/<dataset>.
    listing = "".join(f"{entry['sha256']}  {name}\n" for name, entry in sorted(lineage["data"]["files"].items()))
    assert tags["data.sha256"] == lineage["data"]["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    served = tiny_dataset_server
    sources = {spec["name"]: (spec["sha256"], served.base_url + spec["name"]) for spec in served.specs.values()}
    assert {name: (entry["sha256"], entry["source"]) for name, entry in lineage["data"]["files"].items()} == sources
    assert lineage["config"]["overrides"] == tags["config.overrides"].split()
    assert lineage["config"]["params"] == yaml.safe_load((path / "params.yaml").read_text())
    train_dependency = next(item for item in lock["train"]["deps"] if item["path"] == "pipeline/train.py")
    assert lineage["dvc"]["train"]["deps"]["pipeline/train.py"] == train_dependency["md5"]
    assert set(lineage["dvc"]) == {"download", "preprocess", "train"}
    assert len(lineage["software"]["requirements_lock.sha256"]) == 64
    assert lineage["environment"]["sha256"] == tags["environment.sha256"]


def test_model_is_registered_and_loads_from_the_registry(project, client):
    path, _ = project
    import mlflow

    run_id = metrics_of(path)["mlflow_run_id"]
    versions = client.search_model_versions(f"name='{TINY_DATASET}-mlp'")
    assert [version.run_id for version in versions] == [run_id]
    # Described, tagged, and the champion: the first version on this test set.
    champion = client.get_model_version_by_alias(f"{TINY_DATASET}-mlp", "champion")
    assert str(champion.version) == "1"
    assert "test accuracy" in champion.description and champion.tags["dataset"] == TINY_DATASET
    assert champion.description.startswith(f"test accuracy {metrics_of(path)['test']['accuracy']:.2%}")
    assert set(champion.tags) >= {"dataset", "test_accuracy", "test_set", "test_scope", "run_id", "commit"}
    assert champion.tags["test_scope"] == "full"
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.data.tags["mlflow.note.content"] == champion.description
    assert ", 1 epoch of batch " in champion.description  # the tiny project trains one
    # The experiment and the registered model say what they hold, above their tables.
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert "Keras MLP" in experiment.tags["mlflow.note.content"]
    assert "champion" in client.get_registered_model(f"{TINY_DATASET}-mlp").description
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{TINY_DATASET}-mlp/1")
    assert model.metadata.signature is not None
    # Logged as code, with the Keras model beside it: nothing to unpickle.
    files = [item.path for item in mlflow.artifacts.list_artifacts(f"models:/{TINY_DATASET}-mlp/1")]
    assert "classifier.py" in files and not any(name.endswith(".pkl") for name in files)
    with np.load(path / f"data/processed/{TINY_DATASET}/test.npz") as arrays:
        answers = model.predict(arrays["inputs"][:3])
    assert list(answers.columns) == ["class", "probability", "probabilities"]
    for answer in answers.to_dict(orient="records"):  # class names, and every class's probability
        assert list(answer["probabilities"]) == [str(digit) for digit in range(10)]
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["probability"] == max(answer["probabilities"].values())
        assert answer["probabilities"][answer["class"]] == answer["probability"]


def test_dvc_views_show_metrics_plots_and_params(project, tmp_path):
    path, _ = project
    metrics = run(["dvc", "metrics", "show", "--json"], cwd=path).stdout
    # The workspace's entry is keyed "" in `dvc metrics show --json`.
    shown = json.loads(metrics)[""]["data"]
    # The few numbers that decide, and the ids tying the row to its weights and MLflow run: no per-class
    # scores (reports/per_class_metrics.json is a report), so `dvc exp show` fits a terminal.
    assert list(shown) == ["reports/metrics.json"]
    decision = shown["reports/metrics.json"]["data"]
    assert set(decision) == {"test", "val_accuracy", "weights_sha256", "mlflow_run_id"}
    assert set(decision["test"]) == {"accuracy", "loss", "f1_macro"}
    plots = run(["dvc", "plots", "show", "--json"], cwd=path).stdout
    for title in ("Loss per epoch", "Accuracy per epoch", "Confusion matrix (test split)"):
        assert title in plots
    assert "reports/learning_curves.png" in plots


def test_second_repro_runs_nothing(project):
    path, _ = project
    result = run(["dvc", "repro"], cwd=path)
    assert "Running stage" not in result.stdout
    assert "up to date" in run(["dvc", "status"], cwd=path).stdout


@pytest.fixture(scope="module")
def dropout_changed(project):
    """`dvc params diff` and `dvc repro` after a change of model.dropout_rate to 0.3; then the default again."""
    path, _ = project
    overrides = [f"dataset={TINY_DATASET}", "train.epochs=1", "model.dropout_rate=0.3"]
    run(["mlp", "params", *overrides], cwd=path)
    diff = run(["dvc", "params", "diff", "--json"], cwd=path).stdout
    result = run(["dvc", "repro"], cwd=path)
    run(["git", "checkout", "--", "params.yaml"], cwd=path)
    run(["dvc", "checkout", "--force"], cwd=path)
    return diff, result


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_training_parameter_change_reruns_only_train_and_evaluate(dropout_changed):
    diff, result = dropout_changed
    change = json.loads(diff)["params.yaml"]["model.dropout_rate"]
    assert (change["old"], change["new"]) == (0.45, 0.3)
    assert "Running stage 'train'" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout
    assert "Running stage 'download'" not in result.stdout
    assert "Running stage 'preprocess'" not in result.stdout


@pytest.mark.slow  # needs the dropout change's training: runs in make test-slow
def test_mlp_diff_shows_the_one_changed_parameter_and_tests_the_paired_predictions(project, client, dropout_changed):
    path, _ = project
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    latest, first = client.search_runs(experiments, order_by=["start_time DESC"])[:2]  # dropout 0.3, then 0.45
    result = run(["mlp", "diff", "--json", first.info.run_id, latest.info.run_id], cwd=path)
    comparison = json.loads(result.stdout)
    assert comparison["params"] == {"model.dropout_rate": {"a": "0.45", "b": "0.3"}}
    assert comparison["code"]["files"] == [] and comparison["data"] == {}
    test_size = len((path / "reports/confusion_matrix.csv").read_text().splitlines()) - 1
    assert comparison["significance"]["examples"] == test_size
    assert set(comparison["metrics"]) >= {"test_accuracy", "test_loss"}
    itself = json.loads(run(["mlp", "diff", "--json", first.info.run_id, first.info.run_id], cwd=path).stdout)
    assert itself["params"] == {} and itself["significance"]["p_value"] == 1.0
    assert itself["verdict"].startswith("not distinguishable from seed noise: B - A = +0.00 points")
    text = run(["mlp", "diff", first.info.run_id, latest.info.run_id], cwd=path).stdout
    assert "model.dropout_rate: 0.45 -> 0.3" in text


def test_an_unknown_key_fails_the_run_whichever_way_it_came(project):
    path, _ = project
    original = (path / "params.yaml").read_text()
    try:
        (path / "params.yaml").write_text(original + "foo: 1\n")
        result = run(["dvc", "repro"], cwd=path, check=False)
        assert result.returncode != 0
        assert "foo = 1: unknown key" in result.stderr
        overrides = [f"-S dataset={TINY_DATASET}", "-S train.epochs=1", "-S +foo=1"]
        result = run(["dvc", "exp", "run", *" ".join(overrides).split()], cwd=path, check=False)
        assert result.returncode != 0
        assert "foo = 1: unknown key" in result.stderr
    finally:
        (path / "params.yaml").write_text(original)


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_exp_run_composes_overrides_and_links_mlflow(project, client):
    path, _ = project
    # -S composes conf/ afresh, so the tiny dataset and one epoch are chosen again.
    overrides = [f"dataset={TINY_DATASET}", "train.epochs=1", "model.dropout_rate=0.2", "optimizer=sgd"]
    run(["dvc", "exp", "run", "-n", "sgd-dropout-02", *(f"-S{override}" for override in overrides)], cwd=path)
    params = yaml.safe_load((path / "params.yaml").read_text())
    assert params["model"]["dropout_rate"] == 0.2
    assert params["optimizer"] == {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], cwd=path).stdout)
    experiments = [
        experiment
        for baseline in shown
        for experiment in (baseline.get("experiments") or [])
        if experiment.get("name") == "sgd-dropout-02"
    ]
    assert experiments, f"experiment not listed by dvc exp show: {shown}"
    revision = experiments[0]["revs"][0]["data"]
    run_id = revision["metrics"]["reports/metrics.json"]["data"]["mlflow_run_id"]
    assert revision["params"]["params.yaml"]["data"]["optimizer"]["name"] == "sgd"
    mlflow_run = client.get_run(run_id)
    assert mlflow_run.data.tags["dvc.experiment_name"] == "sgd-dropout-02"
    expected = f"dataset={TINY_DATASET} optimizer=sgd model.dropout_rate=0.2 train.epochs=1"
    assert mlflow_run.data.tags["config.overrides"] == expected
    assert len(user_tags(mlflow_run)) <= 12, sorted(user_tags(mlflow_run))
    # DVC's name, then what differs from the default configuration, keys without their group.
    changes = f"dataset={TINY_DATASET} optimizer=sgd dropout_rate=0.2 epochs=1"
    assert mlflow_run.info.run_name == f"sgd-dropout-02 ({changes})"
    assert mlflow_run.data.params["optimizer.name"] == "sgd"
    assert mlflow_run.info.status == "FINISHED"
    # Registered after evaluation; worse or better than version 1, the champion is the best of the two.
    version = client.search_model_versions(f"name='{TINY_DATASET}-mlp' and run_id='{run_id}'")[0]
    accuracies = {
        v.version: float(v.tags["test_accuracy"]) for v in client.search_model_versions(f"name='{TINY_DATASET}-mlp'")
    }
    best = max(accuracies, key=lambda number: (accuracies[number], -int(number)))
    assert str(client.get_model_version_by_alias(f"{TINY_DATASET}-mlp", "champion").version) == str(best)
    assert "champion" in version.tags["champion_decision"]


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_mlp_ui_serves_the_store_and_links_the_model_training_view_with_the_deciding_columns(project, client):
    path, _ = project
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    environment["PATH"] = f"{BIN_DIRECTORY}{os.pathsep}{environment.get('PATH', '')}"
    command = ["mlp", "ui", "--port", str(port)]
    with subprocess.Popen(command, cwd=path, env=environment, stdout=subprocess.PIPE, text=True) as server:
        try:
            link = server.stdout.readline().strip()
            experiment = client.get_experiment_by_name("keras-mlp")
            base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs"
            assert link == f"{base}?workflowType=machine_learning&viewStateShareKey=mlp-ui"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
                assert answer.status == 200
            # The saved view the link opens: the accuracies and the params the runs differ in, best first.
            view = json.loads(client.get_experiment(experiment.experiment_id).tags["mlflow.sharedViewState.mlp-ui"])
            assert view["selectedColumns"][:2] == ["metrics.`test_accuracy`", "metrics.`val_accuracy`"]
            assert {"params.`model.dropout_rate`", "params.`optimizer.name`"} <= set(view["selectedColumns"])
            assert view["orderByKey"] == "metrics.`test_accuracy`" and view["orderByAsc"] is False
        finally:
            server.terminate()


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_evaluating_again_finds_the_runs_version_and_a_reproduction_registers_nothing(project, client):
    path, _ = project
    name, run_id = f"{TINY_DATASET}-mlp", metrics_of(path)["mlflow_run_id"]
    before = len(client.search_model_versions(f"name='{name}'"))
    result = run([sys.executable, "-m", "pipeline.evaluate"], cwd=path)
    assert "stays the champion" in result.stderr  # a re-evaluation decides nothing new
    result = run([sys.executable, "-m", "pipeline.evaluate"], cwd=path, MLP_REPRODUCES_RUN="0" * 32)
    assert f"{name}: nothing registered: this run reproduces run {'0' * 32}" in result.stderr
    assert len(client.search_model_versions(f"name='{name}'")) == before
    assert len(client.search_model_versions(f"name='{name}' and run_id='{run_id}'")) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    # The same model scored again on the same test set: no repeated point in the metric's history.
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_a_failing_re_evaluation_leaves_the_registered_run_finished(project, client):
    path, _ = project
    run_id = metrics_of(path)["mlflow_run_id"]
    history = path / "reports/training_history.csv"
    original = history.read_text()
    history.write_text(original.splitlines()[0] + "\n")  # the header, no epochs
    try:
        result = run([sys.executable, "-m", "pipeline.evaluate"], cwd=path, check=False)
    finally:
        history.write_text(original)
    assert result.returncode == 1
    assert "reports/training_history.csv holds no epochs" in result.stderr
    assert "Traceback" not in result.stderr
    # Its model is registered: the run stays FINISHED (no version points at a FAILED run), and says what failed.
    assert client.search_model_versions(f"run_id = '{run_id}'")
    ended = client.get_run(run_id)
    assert ended.info.status == "FINISHED"
    assert ended.data.tags["failure.reason"] == "a re-run failed (DataError); its registered evaluation stands"


@pytest.mark.slow
def test_a_dataset_added_by_one_yaml_file_runs_end_to_end(project):
    """tiny_cifar was added like tiny_digits: one file in conf/dataset/ (conftest.add_dataset), no code.
    It is in the real CIFAR-10 "python version" format: a tar.gz of pickled batches, verified by md5.
    It runs Kumar's CIFAR-10 network, the named experiment kumar_cifar10, on this archive."""
    path, _ = project
    overrides = ["experiment=kumar_cifar10", "dataset=tiny_cifar", "train.epochs=1"]
    run(["dvc", "exp", "run", "-n", "kumar_cifar10", *(f"-S{override}" for override in overrides)], cwd=path)
    counts = json.loads((path / "reports/class_counts.json").read_text())
    assert sum(counts["train"].values()) + sum(counts["validation"].values()) == 100  # 5 batches of 20
    assert sum(counts["test"].values()) == 20
    with np.load(path / "data/processed/tiny_cifar/train.npz") as arrays:
        assert arrays["inputs"].shape[1] == 32 * 32 * 3
    metrics = metrics_of(path)
    mlflow_run = MlflowClient(f"sqlite:///{path / 'mlflow.db'}").get_run(metrics["mlflow_run_id"])
    assert mlflow_run.data.params["dataset.format"] == "cifar_python"
    assert mlflow_run.data.params["model.parameter_count"] == str(3072 * 200 + 200 + 200 * 150 + 150 + 150 * 10 + 10)
    assert mlflow_run.data.params["optimizer.learning_rate"] == "0.0005"
    assert mlflow_run.data.params["train.batch_size"] == "32"
    assert mlflow_run.info.status == "FINISHED"
    name = mlflow_run.info.run_name
    assert name.startswith("kumar_cifar10 (") and "experiment=kumar_cifar10" in name
    for metric in ("test_precision_macro", "test_recall_macro", "test_f1_macro"):
        assert metric in mlflow_run.data.metrics
