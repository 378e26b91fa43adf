"""`mlp search` end to end on the tiny dataset: real DVC experiments, MLflow runs and Optuna studies.

Each trial is a `dvc exp run --temp ... train` of about ten seconds here, most
of it process start; the tests keep to a handful of trials each.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from conftest import BIN_DIRECTORY, make_tiny_project, run
from optuna.trial import TrialState

TINY_SEARCH = {
    "overrides": ["dataset=tiny_digits", "model.hidden_units=[16]"],
    "parameters": {
        "optimizer.learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.dropout_rate": {"type": "float", "low": 0.0, "high": 0.5},
        "model.num_layers": {"type": "int", "low": 1, "high": 2},
        "model.units_per_layer": {"type": "int", "low": 8, "high": 32, "step": 8},
        "train.epochs": {"type": "int", "low": 2, "high": 4},
    },
    "objective": {"metric": "val_accuracy"},
    "sampler": {"name": "tpe", "seed": 7, "n_startup_trials": 2},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
    "budget": {"n_trials": 3},
}
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


def search_project(directory: Path, served, search: dict) -> Path:
    """A tiny project with conf/search/tiny.yaml and its data stages run and committed, as a user would have it."""
    path = make_tiny_project(directory, served)
    (path / "conf/search").mkdir(exist_ok=True)
    (path / "conf/search/tiny.yaml").write_text(yaml.safe_dump(search, sort_keys=False))
    run(["dvc", "repro", "preprocess"], cwd=path)
    run(["git", "add", "-A"], cwd=path)
    run([*GIT, "commit", "-qm", "a search, and the data its trials train on"], cwd=path)
    return path


def mlp_search(path: Path, *arguments: str, check: bool = True, **environment: str) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, "-m", "pipeline.cli", "search", "tiny", *arguments], cwd=path, check=check, **environment
    )


def journal(path: Path, study: str = "tiny") -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path / f".search/{study}/study.journal"))
    )
    return optuna.load_study(study_name=study, storage=storage)


def runs(path: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("keras-mlp").experiment_id], max_results=1000)


def trial_runs(path: Path, study: str) -> dict[int, list[mlflow.entities.Run]]:
    found: dict[int, list] = {}
    for item in runs(path):
        if item.data.tags.get("search.study") == study and "search.trial" in item.data.tags:
            found.setdefault(int(item.data.tags["search.trial"]), []).append(item)
    return found


@pytest.mark.slow
def test_search_prunes_reports_and_its_best_experiment_retrains_the_same_weights(tmp_path, tiny_dataset_server):
    path = search_project(tmp_path / "project", tiny_dataset_server, TINY_SEARCH)
    mlp_search(path)
    study = journal(path)
    states = [trial.state for trial in study.trials]
    assert len(states) == 3 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    # Every trial is one MLflow run, a child of the study's run, with its number, state and params.
    parent = study.user_attrs["mlflow_parent_run_id"]
    by_trial = trial_runs(path, "tiny")
    assert sorted(by_trial) == [0, 1, 2] and all(len(found) == 1 for found in by_trial.values())
    for trial in study.trials:
        (trial_run,) = by_trial[trial.number]
        assert trial_run.data.tags["mlflow.parentRunId"] == parent
        assert json.loads(trial_run.data.tags["search.param.model.dropout_rate"]) == trial.params["model.dropout_rate"]
        expected = {TrialState.COMPLETE: ("FINISHED", "complete"), TrialState.PRUNED: ("KILLED", "pruned")}
        assert (trial_run.info.status, trial_run.data.tags["search.state"]) == expected[trial.state]
    # Completed trials are DVC experiments; pruned ones did not train the epochs their params say.
    experiments = run(["dvc", "exp", "list", "--name-only"], cwd=path).stdout.split()
    for trial in study.trials:
        assert (f"tiny-trial-{trial.number:03d}" in experiments) == (trial.state == TrialState.COMPLETE)

    report = path / "reports/search/tiny"
    best = json.loads((report / "best.json").read_text())
    assert best["best_trial"]["number"] == study.best_trial.number
    assert best["test"]["same_weights_as_the_trial"] is True and 0 <= best["test"]["accuracy"] <= 1
    assert (report / "optimization_history.png").stat().st_size > 0
    assert len((report / "trials.csv").read_text().splitlines()) == 1 + 3

    # The best configuration, committed, retrains to the trial's weights.
    run(["git", "add", "conf/experiment/tiny_best.yaml"], cwd=path)
    run([*GIT, "commit", "-qm", "the best trial's configuration"], cwd=path)
    run(["dvc", "exp", "run", "-S", "experiment=tiny_best"], cwd=path)
    metrics = json.loads((path / "reports/metrics.json").read_text())
    assert metrics["weights_sha256"] == best["best_trial"]["weights_sha256"]

    # And `mlp reproduce` rebuilds the trial's run from its lineage, to the same weights.
    reproduced = run([sys.executable, "-m", "pipeline.cli", "reproduce", best["best_trial"]["mlflow_run_id"]], cwd=path)
    assert "verdict: identical" in reproduced.stdout

    # Deterministic: a fresh study of the same search file draws the same parameters, trial by trial.
    mlp_search(path, "--study", "tiny_again", "--no-report")
    again = journal(path, "tiny_again")
    assert [trial.params for trial in again.trials] == [trial.params for trial in study.trials]
    assert [trial.state for trial in again.trials] == states


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_search(path: Path) -> subprocess.Popen:
    """`mlp search tiny --workers 2` in a session of its own: the test can kill its whole process group."""
    environment = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}"}
    for variable in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        environment.pop(variable, None)
    command = [sys.executable, "-m", "pipeline.cli", "search", "tiny", "--workers", "2"]
    return subprocess.Popen(
        command, cwd=path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def training(path: Path, number: int) -> bool:
    log = path / f".search/tiny/tiny-trial-{number:03d}.log"
    return log.is_file() and "Epoch 5/" in log.read_text(errors="replace")


def trial_processes(path: Path) -> dict[str, list[int]]:
    """{trial number: pids} of the live processes of this project that run a trial (`dvc exp run`, its stage)."""
    import psutil

    found: dict[str, list[int]] = {}
    for process in psutil.process_iter():
        try:
            environment, directory = process.environ(), process.cwd()
        except (psutil.Error, OSError):
            continue  # gone, or not ours
        if "MLP_SEARCH_TRIAL" in environment and directory.startswith(str(path)):
            found.setdefault(environment["MLP_SEARCH_TRIAL"], []).append(process.pid)
    return found


class TrialCounter(threading.Thread):
    """Counts, every half second, the trials that run on this machine; keeps the most seen at once."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.most, self.stopped = path, 0, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.most = max(self.most, len(trial_processes(self.path)))


@pytest.mark.slow
def test_a_search_killed_twice_leaves_no_trial_running_and_reports_what_optuna_recorded(tmp_path, tiny_dataset_server):
    # Long enough trials (100 short epochs) to be killed in the middle, and no pruning.
    search = TINY_SEARCH | {"overrides": [*TINY_SEARCH["overrides"], "train.epochs=100"], "pruner": {"name": "none"}}
    search["parameters"] = {name: spec for name, spec in search["parameters"].items() if name != "train.epochs"}
    path = search_project(tmp_path / "project", tiny_dataset_server, search)
    counter = TrialCounter(path)
    counter.start()

    # kill -9 of the whole `mlp search` group, twice, each time with both workers' trials training.
    for first in (0, 2):
        process = start_search(path)
        wait_for(
            lambda first=first: training(path, first) and training(path, first + 1), 600, f"trials {first}, {first + 1}"
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        wait_for(lambda: not trial_processes(path), 30, "the killed search's trials to end")

    # SIGTERM (as Ctrl+C) while trials 4 and 5 train: they stop, are marked FAIL, and nothing runs on.
    process = start_search(path)
    wait_for(lambda: training(path, 4) and training(path, 5), 600, "trials 4, 5 to train")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 130
    assert not trial_processes(path)
    assert [journal(path).trials[number].state for number in (4, 5)] == [TrialState.FAIL] * 2

    mlp_search(path, "--workers", "2")
    counter.stopped.set()
    counter.join()
    assert counter.most <= 2 and not trial_processes(path)
    study = journal(path)
    states = [trial.state for trial in study.trials]
    assert states[:6] == [TrialState.FAIL] * 6
    assert set(states[6:]) == {TrialState.COMPLETE} and len(states[6:]) >= 3
    best = json.loads((path / "reports/search/tiny/best.json").read_text())
    assert best["trials"] == {state.name.lower(): states.count(state) for state in TrialState}
    assert best["best_trial"]["number"] == study.best_trial.number
    by_trial = trial_runs(path, "tiny")
    assert all(len(found) == 1 for found in by_trial.values())
    for number in range(6):
        if number in by_trial:
            assert by_trial[number][0].data.tags["search.state"] == "failed"
    print(f"\nmost trials at once: {counter.most}; trials: {best['trials']}")


@pytest.mark.slow
def test_a_relative_storage_path_is_the_one_the_trial_opens_in_dvcs_temporary_copy(tmp_path, tiny_dataset_server):
    search = TINY_SEARCH | {"pruner": {"name": "none"}, "budget": {"n_trials": 1}}
    path = search_project(tmp_path / "project", tiny_dataset_server, search)
    (path / "studies").mkdir()
    mlp_search(path, "--storage", "sqlite:///studies/tiny.db", "--no-report")
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{path / 'studies/tiny.db'}")
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE]


@pytest.fixture
def team_server(tmp_path):
    """`mlp server start` on free ports: PostgreSQL (with the search database) and MLflow with basic auth."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = tmp_path / "server"
    run(["mlp", "server", "start", "--state-dir", str(state), "--port", str(port), "--workers", "1"], cwd=tmp_path)
    yield state, f"http://127.0.0.1:{port}"
    run(["mlp", "server", "stop", "--state-dir", str(state)], cwd=tmp_path)


@pytest.mark.slow
def test_two_groups_of_workers_share_one_study_through_postgresql(
    tmp_path, tiny_dataset_server, team_server, monkeypatch
):
    state, url = team_server
    postgres_port = json.loads((state / "runtime.json").read_text())["postgres_port"]
    # No password in the URL: libpq reads it from the search role's pgpass file, what search users get.
    storage = f"postgresql+psycopg://search@127.0.0.1:{postgres_port}/search"
    environment = {
        "MLFLOW_TRACKING_URI": url,
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": (state / "admin_password").read_text().strip(),
        "PGPASSFILE": str(state / "search.pgpass"),
        "MLP_SEARCH_STORAGE": storage,
    }
    for key in ("PGPASSFILE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, environment[key])  # for this test's own look at the study and the runs
    search = TINY_SEARCH | {"pruner": {"name": "none"}, "budget": {"n_trials": 5}}
    clones = [search_project(tmp_path / name, tiny_dataset_server, search) for name in ("first", "second")]
    command = [sys.executable, "-m", "pipeline.cli", "search", "tiny", "--no-report"]
    # As documented: PGPASSFILE relative to where `mlp search` runs (each clone, beside the server's folder).
    environment["PGPASSFILE"] = os.path.join("..", "server", "search.pgpass")
    full_environment = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}", **environment}
    first = subprocess.Popen([*command, "--workers", "2"], cwd=clones[0], env=full_environment, stderr=subprocess.PIPE)
    study_storage = optuna.storages.RDBStorage(storage)
    # The first group creates the study (and its tables); the second joins it.
    wait_for(lambda: "mlflow_parent_run_id" in load_attributes(study_storage), 120, "the study")
    second = subprocess.Popen([*command, "--workers", "1"], cwd=clones[1], env=full_environment, stderr=subprocess.PIPE)
    assert first.wait(timeout=600) == 0, first.stderr.read().decode()[-3000:]
    assert second.wait(timeout=600) == 0, second.stderr.read().decode()[-3000:]

    study = optuna.load_study(study_name="tiny", storage=study_storage)
    numbers = [trial.number for trial in study.trials]
    assert len(numbers) >= 5 and all(trial.state == TrialState.COMPLETE for trial in study.trials)
    # Each trial is a DVC experiment of the clone that ran it: the groups' counts add up, none twice.
    names = [run(["dvc", "exp", "list", "--name-only"], cwd=clone).stdout.split() for clone in clones]
    assert all(names), names
    assert sorted(names[0] + names[1]) == [f"tiny-trial-{number:03d}" for number in sorted(numbers)]
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("keras-mlp").experiment_id
    trial_runs = client.search_runs([experiment], "tags.`search.study` = 'tiny'", max_results=1000)
    numbers_run = sorted(int(item.data.tags["search.trial"]) for item in trial_runs if "search.trial" in item.data.tags)
    assert numbers_run == sorted(numbers)
    print(f"\ntrials: {len(numbers)}, first group {len(names[0])}, second group {len(names[1])}")


def load_attributes(storage) -> dict:
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name("tiny"))
    except KeyError:
        return {}


@pytest.mark.slow
def test_a_search_on_the_servers_postgresql_survives_a_restart_of_the_server(
    tmp_path, tiny_dataset_server, team_server, monkeypatch
):
    """`mlp server stop` and `start` while two trials train: the search keeps its --storage URL and completes.

    The trials track into the clone's own MLflow store: what restarts under them is the search database only
    (a tracking server down for longer than a minute stops a stage, by design: pipeline.stage)."""
    state, _ = team_server
    postgres_port = json.loads((state / "runtime.json").read_text())["postgres_port"]
    storage = f"postgresql+psycopg://search@127.0.0.1:{postgres_port}/search"
    monkeypatch.setenv("PGPASSFILE", str(state / "search.pgpass"))
    # Trials long enough (600 short epochs) to be training through the restart, and no pruning.
    search = TINY_SEARCH | {
        "overrides": [*TINY_SEARCH["overrides"], f"train.epochs={RESTART_EPOCHS}"],
        "pruner": {"name": "none"},
        "budget": {"n_trials": 2},
    }
    search["parameters"] = {name: spec for name, spec in search["parameters"].items() if name != "train.epochs"}
    path = search_project(tmp_path / "project", tiny_dataset_server, search)
    environment = {**os.environ, "PATH": f"{BIN_DIRECTORY}{os.pathsep}{os.environ['PATH']}"}
    environment.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "pipeline.cli", "search", "tiny", "--workers", "2", "--storage", storage]
    # In a session of its own: a failing test ends the search's whole group. Its output to a file: a pipe
    # nobody reads while the test waits would fill up and stop it.
    errors = tmp_path / "search.stderr"
    with errors.open("w") as output:
        process = subprocess.Popen(
            command, cwd=path, env=environment, stdout=subprocess.DEVNULL, stderr=output, start_new_session=True
        )
    try:
        spanning = wait_for(lambda: training_trials(path) if len(training_trials(path)) == 2 else None, 600, "trials")
        began = time.monotonic()
        run(["mlp", "server", "stop", "--state-dir", str(state)], cwd=tmp_path)
        down = datetime.datetime.now()
        run(["mlp", "server", "start", "--state-dir", str(state)], cwd=tmp_path)
        restarted_seconds = time.monotonic() - began
        assert json.loads((state / "runtime.json").read_text())["postgres_port"] == postgres_port
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, errors.read_text()[-3000:]
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [trial.state for trial in study.trials]
    assert states.count(TrialState.COMPLETE) == 2
    # The two trials trained while the database was down (each waited for it), and were recorded after.
    for number in spanning:
        log = (path / f".search/tiny/tiny-trial-{number:03d}.log").read_text(errors="replace")
        assert "the search database refuses connections" in log, f"trial {number} did not train through the restart"
        assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].datetime_complete > down
    # Any other ending is DVC's: two `dvc exp run --temp` starting at once may miss its repository lock.
    for trial in study.trials:
        if trial.state != TrialState.COMPLETE:
            log = (path / f".search/tiny/tiny-trial-{trial.number:03d}.log").read_text(errors="replace")
            assert "Unable to acquire lock" in log, log[-3000:]
    best = json.loads((path / "reports/search/tiny/best.json").read_text())
    assert best["trials"] == {state.name.lower(): states.count(state) for state in TrialState}
    assert best["best_trial"]["number"] == study.best_trial.number
    print(f"\nserver restarted in {restarted_seconds:.1f} s while trials {spanning} trained; {best['trials']}")


RESTART_EPOCHS = 600


def trained(path: Path, number: int, epochs: int) -> bool:
    log = path / f".search/tiny/tiny-trial-{number:03d}.log"
    return f"Epoch {epochs}/{epochs}" in log.read_text(errors="replace")


def training_trials(path: Path) -> list[int]:
    """The trials whose log shows them at epoch 5 or later and not done."""
    numbers = [int(log.stem.rsplit("-", 1)[1]) for log in (path / ".search/tiny").glob("tiny-trial-*.log")]
    return sorted(n for n in numbers if training(path, n) and not trained(path, n, RESTART_EPOCHS))
