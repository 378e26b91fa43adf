"""Deterministic training, the lineage record on every run, and `reproduce <run id>`,
on a tiny project run with the real DVC, MLflow and Keras.

The tests share one project and run in file order; each restores what it tampers with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from conftest import TINY_DATASET, make_tiny_project, run
from mlflow.tracking import MlflowClient

from pipeline import hardware


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_dataset_server):
    path = make_tiny_project(tmp_path_factory.mktemp("project"), tiny_dataset_server)
    run(["dvc", "repro"], cwd=path)
    metrics = json.loads((path / "reports/metrics.json").read_text())
    return path, metrics["mlflow_run_id"], tiny_dataset_server.specs


@pytest.fixture(scope="module")
def client(project):
    path, _, _ = project
    return MlflowClient(f"sqlite:///{path / 'mlflow.db'}")


def reproduce(path, *arguments, **environment):
    return run(["mlp", "reproduce", *arguments], cwd=path, check=False, **environment)


def artifacts(client, run_id) -> Path:
    # The default store keeps artifacts as plain files under mlartifacts/.
    return Path(urlparse(client.get_run(run_id).info.artifact_uri).path)


def lineage_of(client, run_id) -> dict:
    return json.loads((artifacts(client, run_id) / "lineage/lineage.json").read_text())


def test_run_carries_the_lineage_record(project, client, tiny_dataset_server):
    path, run_id, specs = project
    mlflow_run = client.get_run(run_id)
    lineage = lineage_of(client, run_id)
    assert lineage["code"]["commit"] == run(["git", "rev-parse", "HEAD"], cwd=path).stdout.strip()
    assert lineage["code"]["dirty"] is False and lineage["code"]["diff"] is None
    for package in ("tensorflow-cpu", "keras", "dvc", "hydra-core", "mlflow"):
        assert lineage["software"][package]
    assert len(lineage["software"]["requirements_lock.sha256"]) == 64
    # The true source: the URL that served each file (here the test's server), not just the first public URL.
    base_url = tiny_dataset_server.base_url
    files = {spec["name"]: {"sha256": spec["sha256"], "source": base_url + spec["name"]} for spec in specs.values()}
    assert lineage["data"]["files"] == files
    assert lineage["config"]["overrides"] == [f"dataset={TINY_DATASET}", "train.epochs=1"]
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    train_dependency = next(item for item in lock["train"]["deps"] if item["path"] == "pipeline/train.py")
    assert lineage["dvc"]["train"]["deps"]["pipeline/train.py"] == train_dependency["md5"]
    processed = f"data/processed/{TINY_DATASET}"
    assert lineage["dvc"]["preprocess"]["outs"][processed] == lock["preprocess"]["outs"][0]["md5"]
    metrics = json.loads((path / "reports/metrics.json").read_text())
    assert mlflow_run.data.tags["model.weights_sha256"] == metrics["weights_sha256"]
    inputs = {item.dataset.name: item for item in mlflow_run.inputs.dataset_inputs}
    assert set(inputs) == {f"{TINY_DATASET}-{split}" for split in ("train", "validation", "test")}
    assert all(item.dataset.digest for item in inputs.values())
    assert all(base_url in item.dataset.source for item in inputs.values())


def test_run_carries_the_environment_fingerprint(project, client):
    _, run_id, _ = project
    tags = client.get_run(run_id).data.tags
    record = json.loads((artifacts(client, run_id) / "lineage/environment.json").read_text())
    assert tags["environment.sha256"] == hardware.digest(record) == lineage_of(client, run_id)["environment"]["sha256"]
    assert tags["cpu.isa"] == hardware.isa_summary(record)
    assert record["packages"] == lineage_of(client, run_id)["software"]
    assert record["cpu"]["isa_cpuid"] and record["cpu"]["caches"] is not None
    assert record["threads"]["intra_op"] >= 1 and record["tensorflow"]["version"]


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_training_twice_in_separate_processes_gives_the_same_weights(project, client):
    path, run_id, _ = project
    result = reproduce(path, "--repeatability")
    assert result.returncode == 0, result.stderr
    hashes = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("training ")]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert "verdict: repeatable" in result.stdout
    # The same configuration trained by `dvc repro` ended with the same weights.
    assert hashes[0] == client.get_run(run_id).data.tags["model.weights_sha256"]


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_another_seed_gives_other_weights(project, client):
    path, run_id, _ = project
    params = path / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("seed: 42", "seed: 43"))
    try:
        result = run([sys.executable, "-m", "pipeline.train", "--hash-only"], cwd=path)
    finally:
        params.write_text(original)
    assert result.stdout.strip().splitlines()[-1] != client.get_run(run_id).data.tags["model.weights_sha256"]


@pytest.mark.slow
def test_portable_mode_restarts_the_train_stage_with_its_settings(project):
    path, _, _ = project
    params = path / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("determinism: host", "determinism: portable"))
    try:
        result = run([sys.executable, "-m", "pipeline.train", "--hash-only"], cwd=path)
    finally:
        params.write_text(original)
    settings = "TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=SSE41 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1"
    assert f"train.determinism portable: restarting with {settings}" in result.stderr
    assert len(result.stdout.strip().splitlines()[-1]) == 64


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_reproduce_reports_a_match_and_records_the_reproduction(project, client):
    path, run_id, _ = project
    result = reproduce(path, run_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the environment is the recorded run's (compared by lineage/environment.json)" in result.stdout
    assert "verdict: identical" in result.stdout
    assert "dvc.lock: every stage input (code, data, requirements.lock) as recorded" in result.stdout
    assert "MISMATCH" not in result.stdout
    # This project's dvc.lock was never committed: nothing says what DVC could pull for the commit.
    assert "recomputing data/raw and data/processed: the commit has no dvc.lock" in result.stderr
    reproductions = client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string=f"tags.reproduces = '{run_id}'"
    )
    assert len(reproductions) == 1
    assert reproductions[0].data.tags["reproduction.verdict"] == "identical"
    # Its own lineage says what it reproduces; its tags stay few, with `reproduces` and the verdict.
    assert lineage_of(client, reproductions[0].info.run_id)["reproduces"] == run_id
    assert len([key for key in reproductions[0].data.tags if not key.startswith("mlflow.")]) <= 12
    assert reproductions[0].data.tags["git.commit"] == client.get_run(run_id).data.tags["git.commit"]
    assert "worktree" not in run(["git", "worktree", "list"], cwd=path).stdout.split("\n", 1)[-1]


@pytest.mark.slow
def test_reproduce_in_another_environment_names_the_differences_and_judges_equivalence(project, client):
    path, run_id, _ = project
    recorded = artifacts(client, run_id) / "lineage/environment.json"
    original = recorded.read_text()
    record = json.loads(original)
    # As if recorded on a Sandy Bridge with 64 threads.
    record["cpu"]["isa"], record["threads"]["intra_op"] = ["sse4_1", "sse4_2", "avx"], 64
    recorded.write_text(json.dumps(record))
    run(["mlp", "tolerance", "--seeds", "3"], cwd=path)
    # And reproduced here with other kernels: oneDNN's oldest and one thread.
    other_kernels = {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "SSE41", "TF_NUM_INTRAOP_THREADS": "1"}
    try:
        result = reproduce(path, run_id, **other_kernels)
    finally:
        recorded.write_text(original)
        for tolerance in (path / "reports/tolerance").glob("*.json"):
            tolerance.unlink()
    if "verdict: identical" in result.stdout:
        pytest.skip("this CPU computes the same weights with oneDNN's SSE4.1 kernels on one thread")
    assert result.returncode == 3, result.stdout + result.stderr
    for line in ("cpu.isa ", "threads.intra_op 64 -> 1", "environment.ONEDNN_MAX_CPU_ISA (none) -> SSE41"):
        assert f"\n    {line}" in result.stdout
    assert "bitwise identical weights are not expected" in result.stdout
    assert "measured across seeds in reports/tolerance/" in result.stdout
    assert "verdict: equivalent within tolerance (environment differs: cpu.isa, " in result.stdout
    reproductions = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.reproduces = '{run_id}' and tags.`reproduction.verdict` = 'equivalent'",
    )
    assert len(reproductions) == 1


def test_reproduce_refuses_data_that_no_longer_verifies(project):
    path, run_id, specs = project
    data_file = path / "data/raw" / TINY_DATASET / specs["test_labels"]["name"]
    original = data_file.read_bytes()
    data_file.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        result = reproduce(path, run_id)
    finally:
        data_file.write_bytes(original)
    assert result.returncode == 1
    assert f"{data_file} no longer verifies: sha256 " in result.stderr
    assert f"the run recorded {specs['test_labels']['sha256']}" in result.stderr


def test_reproduce_refuses_a_missing_commit(project, client):
    """The commit comes from the lineage record, not from the tag (which is there to filter by)."""
    path, run_id, _ = project
    recorded = artifacts(client, run_id) / "lineage/lineage.json"
    original = recorded.read_text()
    lineage = json.loads(original)
    lineage["code"]["commit"] = "0" * 40
    recorded.write_text(json.dumps(lineage))
    try:
        result = reproduce(path, run_id)
    finally:
        recorded.write_text(original)
    assert result.returncode == 1
    assert f"was made at commit {'0' * 40}, which this repository does not have" in result.stderr


@pytest.mark.slow
def test_reproduce_reports_a_mismatch_when_the_recorded_config_was_tampered_with(project, client):
    path, run_id, _ = project
    recorded = artifacts(client, run_id) / "lineage/lineage.json"
    original = recorded.read_text()
    lineage = json.loads(original)
    lineage["config"]["params"]["model"]["dropout_rate"] = 0.2
    recorded.write_text(json.dumps(lineage))
    try:
        result = reproduce(path, run_id)
    finally:
        recorded.write_text(original)
    assert result.returncode == 1
    assert "model.weights_sha256" in result.stdout and "MISMATCH" in result.stdout
    assert "verdict: MISMATCH in an identical environment" in result.stdout


@pytest.mark.slow  # tens of seconds: runs in make test-slow
def test_an_uncommitted_config_file_marks_the_run_dirty_and_is_stored_with_it(project, client):
    """A new conf/ file that is not committed: the run says dirty, warns, and keeps the file."""
    path, _, _ = project
    extra = path / "conf/dataset/not_committed.yaml"
    extra.write_text((path / "conf/dataset/mnist.yaml").read_text())
    try:
        result = run([sys.executable, "-m", "pipeline.train"], cwd=path)
    finally:
        extra.unlink()
    run_id = json.loads((path / "data/model/mlflow_run.json").read_text())["run_id"]
    assert "conf/dataset/not_committed.yaml is not committed" in result.stderr
    assert "`git add conf/dataset/not_committed.yaml`" in result.stderr
    assert client.get_run(run_id).data.tags["git.dirty"] == "true"
    code = lineage_of(client, run_id)["code"]
    assert code["dirty"] is True and code["diff"] is None
    expected = {"conf/dataset/not_committed.yaml": "lineage/untracked/conf/dataset/not_committed.yaml"}
    assert code["untracked_config_files"] == expected
    stored = artifacts(client, run_id) / "lineage/untracked/conf/dataset/not_committed.yaml"
    assert stored.read_text() == (path / "conf/dataset/mnist.yaml").read_text()
