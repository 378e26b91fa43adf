"""`mlp search`: search files checked before any trial, trials' overrides, the best configuration.

The searches themselves (real DVC experiments, MLflow runs, pruning, resume,
determinism, PostgreSQL) run in tests/test_search_slow.py.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from conftest import REPOSITORY, run

from pipeline.errors import ConfigError
from pipeline.search.schema import SEARCH_DIRECTORY, Search, check_values, corners, trial_overrides

VALID = {
    "overrides": ["dataset=mnist"],
    "parameters": {
        "optimizer.learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-3, "log": True},
        "model.num_layers": {"type": "int", "low": 2, "high": 3},
        "model.units_per_layer": {"type": "int", "low": 512, "high": 1024, "step": 128},
        "optimizer": {"type": "categorical", "choices": ["adam", "rmsprop"]},
    },
    "objective": {"metric": "val_accuracy"},
    "budget": {"n_trials": 10},
}


def write(tmp_path, content: dict):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def changed(**sections) -> dict:
    content = yaml.safe_load(yaml.safe_dump(VALID))
    for key, value in sections.items():
        content[key] = value
    return content


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            changed(parameters={"model.width": {"type": "int", "low": 1, "high": 2}}),
            "parameters: Value error, unknown parameter model.width; allowed: optimizer, optimizer.learning_rate",
        ),
        (
            changed(parameters={"model.dropout_rate": {"type": "float", "low": 0.5, "high": 0.2}}),
            "parameters.model.dropout_rate: empty range: low 0.5 > high 0.2",
        ),
        (
            changed(parameters={"optimizer": {"type": "categorical", "choices": []}}),
            "parameters.optimizer.choices: List should have at least 1 item",
        ),
        (
            changed(objective={"metric": "test_accuracy"}),
            "objective.metric: test_accuracy: a search never looks at the test split; allowed: val_accuracy, val_loss",
        ),
        (
            changed(objective={"metric": "val_loss", "direction": "maximize"}),
            "objective: val_loss is to minimize, not to maximize",
        ),
        (changed(sampler={"name": "cmaes"}), "sampler.name: Input should be 'tpe' or 'random'"),
        (changed(pruner={"name": "patient"}), "pruner.name: Input should be 'median', 'successive_halving'"),
        (changed(budget={}), "budget: set n_trials, timeout_minutes or both"),
        (
            changed(parameters={"model.num_layers": {"type": "int", "low": 1, "high": 2}}),
            "model.num_layers and model.units_per_layer go together",
        ),
    ],
    ids=[
        "unknown-parameter",
        "empty-range",
        "no-choices",
        "test-metric",
        "direction",
        "sampler",
        "pruner",
        "budget",
        "layers",
    ],
)
def test_bad_search_files_are_refused_naming_the_key_and_what_is_allowed(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        Search.load(path)
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith(f"{path}: ")
    assert message.replace("Value error, ", "") in first_line


def test_a_value_no_stage_accepts_is_refused_before_any_trial(tmp_path):
    content = changed(parameters={"model.dropout_rate": {"type": "float", "low": 0.2, "high": 1.5}})
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=r"model.dropout_rate = 1.5: Input should be less than 1"):
        check_values(Search.load(path), path)


def test_trial_values_become_the_overrides_dvc_exp_run_takes(tmp_path):
    search = Search.load(write(tmp_path, changed(experiment="smoke")))
    values = {
        "optimizer.learning_rate": 0.001,
        "model.num_layers": 3,
        "model.units_per_layer": 640,
        "optimizer": "rmsprop",
    }
    assert trial_overrides(search, values) == [
        "experiment=smoke",
        "dataset=mnist",
        "optimizer=rmsprop",
        "optimizer.learning_rate=0.001",
        "model.hidden_units=[640,640,640]",
    ]
    # Both range ends and every choice are checked.
    assert [point["optimizer"] for point in corners(search)] == ["adam", "adam", "rmsprop"]
    assert [point["model.units_per_layer"] for point in corners(search)] == [512, 1024, 512]


@pytest.mark.parametrize("name", sorted(path.stem for path in SEARCH_DIRECTORY.glob("*.yaml")))
def test_every_search_file_validates_at_every_range_end(name):
    path = SEARCH_DIRECTORY / f"{name}.yaml"
    check_values(Search.load(path), path)


def test_mlp_search_refuses_a_bad_file_in_one_line_and_exits_1(tmp_path):
    path = write(tmp_path, changed(objective={"metric": "test_accuracy"}))
    result = run([sys.executable, "-m", "pipeline.cli", "search", str(path)], cwd=REPOSITORY, check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert errors == [
        f"{errors[0].split(' pipeline ERROR')[0]} pipeline ERROR: {path}: objective.metric: test_accuracy: "
        "a search never looks at the test split; allowed: val_accuracy, val_loss"
    ]


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband", "none"])
def test_the_train_stage_finds_its_trial_and_the_study_pruner(tmp_path, monkeypatch, pruner):
    import optuna

    from pipeline.search import storage
    from pipeline.search import trial as search_trial
    from pipeline.search.coordinator import create_study
    from pipeline.search.schema import Pruner
    from pipeline.search.storage import make_pruner

    search = Search.load(write(tmp_path, changed(pruner={"name": pruner})))
    location = str(tmp_path / "study.journal")
    study = create_study("tiny", location, search, max_epochs=4)
    study.set_user_attr("mlflow_parent_run_id", "parent-run")
    asked = study.ask()
    asked.suggest_float("model.dropout_rate", 0.0, 0.5)
    for variable, value in {
        storage.TRIAL_VARIABLE: str(asked.number),
        storage.STORAGE_VARIABLE: location,
        storage.STUDY_VARIABLE: "tiny",
        storage.PARENT_RUN_VARIABLE: "parent-run",
    }.items():
        monkeypatch.setenv(variable, value)
    trial, metric = search_trial.current_trial()
    assert (trial.number, metric) == (asked.number, "val_accuracy")
    assert type(trial.study.pruner).__name__ == type(make_pruner(Pruner(name=pruner).spec(4))).__name__
    trial.report(0.5, step=1)
    assert trial.should_prune() is False  # the first trial: nothing to compare with
    tags = search_trial.run_tags()
    assert tags["mlflow.parentRunId"] == "parent-run" and tags["search.trial"] == str(asked.number)
    assert float(tags["search.param.model.dropout_rate"]) == asked.params["model.dropout_rate"]
    assert study.trials[0].intermediate_values == {1: 0.5}
    # Its checkpoint is its own: another trial with the same params never resumes it.
    assert search_trial.checkpoint_owner() == {"search_trial": f"tiny/{asked.number}"}
    assert isinstance(study, optuna.Study)


def test_without_a_trial_the_train_stage_gets_no_tags_and_no_callbacks(monkeypatch):
    from pipeline.search import storage
    from pipeline.search import trial as search_trial

    monkeypatch.delenv(storage.TRIAL_VARIABLE, raising=False)
    assert search_trial.run_tags() == {} and search_trial.callbacks() == [] and search_trial.checkpoint_owner() == {}


def test_a_study_name_that_cannot_name_a_folder_or_an_experiment_is_refused(tmp_path):
    path = write(tmp_path, VALID)
    result = run(
        [sys.executable, "-m", "pipeline.cli", "search", str(path), "--study", "a/b"], cwd=REPOSITORY, check=False
    )
    assert result.returncode == 1
    assert "study name 'a/b': use letters, digits, '_' and '-' only" in result.stderr


def test_the_report_counts_trials_and_times_them_from_first_start_to_last_end():
    import datetime

    import optuna

    from pipeline.search.report import counts, readme

    study = optuna.create_study(study_name="times", direction="maximize")
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    for number, (state, begin, minutes, fit) in enumerate(
        [("COMPLETE", 0, 3, 150.0), ("COMPLETE", 1, 5, 280.0), ("PRUNED", 4, 1, None), ("FAIL", 6, 1.5, None)]
    ):
        trial = optuna.trial.create_trial(
            state=optuna.trial.TrialState[state],
            value=0.98 + number / 1000 if state == "COMPLETE" else None,
            user_attrs={"wall_seconds": minutes * 60, "fit_seconds": fit} if fit else {},
        )
        trial.datetime_start = start + datetime.timedelta(minutes=begin)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(minutes=minutes)
        study.add_trial(trial)
    facts = counts(study)
    assert facts["trials"] == {"running": 0, "waiting": 0, "complete": 2, "pruned": 1, "fail": 1}
    assert facts["trials_wall_minutes"] == 7.5  # 12:00 to 12:07:30, though the trials' minutes add up to 10.5
    assert facts["overhead_seconds_per_trial"] == (30.0 + 20.0) / 2
    text = readme("times", SEARCH_DIRECTORY / "times.yaml", facts, plots=[])
    assert "2 complete, 1 pruned, 1 failed, 0 running, in 7.5 minutes from the first start to the last end" in text
    assert " cores." in text.splitlines()[2]
