"""The registry: one version per run, and a champion that is the best on the full test set."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.registry import CHAMPION, promote_if_best, register

NAME = "digits-mlp"


@pytest.fixture
def client(tmp_path):
    # MLflow resolves a models:/<model id> source through the process's tracking URI.
    uri, previous = f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(previous)


def add_version(client, accuracy: float, *, test_set: str = "A", scope: str = "full", run=None) -> str:
    """Register a model logged by a real run (a new one unless `run` is given), as the evaluate stage does."""
    tags = {"test_accuracy": f"{accuracy:.6f}", "test_set": test_set, "test_scope": scope}
    description = f"test accuracy {accuracy:.2%} on the test set"
    run = run or client.create_run("0")
    model = client.create_logged_model("0", name="model", source_run_id=run.info.run_id)
    uri = f"models:/{model.model_id}"
    return register(client, NAME, run_id=run.info.run_id, model_uri=uri, description=description, tags=tags)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def test_a_run_is_registered_once_and_described(client):
    run = client.create_run("0")
    first = add_version(client, 0.95, run=run)
    again = add_version(client, 0.95, run=run)  # evaluate run again, or resumed after a crash
    assert first == again == "1"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    version = client.get_model_version(NAME, first)
    assert version.description.startswith("test accuracy 95.00%")
    assert version.tags["test_scope"] == "full"
    assert CHAMPION in client.get_registered_model(NAME).description


def test_the_champion_is_the_best_on_the_same_full_test_set(client):
    promote_if_best(client, NAME, add_version(client, 0.95))
    assert champion(client) == "1"
    decision = promote_if_best(client, NAME, add_version(client, 0.97))
    assert champion(client) == "2"
    assert (
        decision
        == "version 2 is the champion with test accuracy 0.9700, beating version 1's 0.9500 on the same full test set"
    )
    # Worse, then equal: the alias stays, and the version says why.
    decision = promote_if_best(client, NAME, add_version(client, 0.96))
    assert champion(client) == "2"
    assert decision.startswith("version 2 stays the champion: its test accuracy 0.9700 is not beaten by version 3's")
    assert client.get_model_version(NAME, "3").tags["champion_decision"] == decision
    promote_if_best(client, NAME, add_version(client, 0.97))
    assert champion(client) == "2"


def test_a_subset_score_never_takes_the_champion(client):
    promote_if_best(client, NAME, add_version(client, 0.95))
    decision = promote_if_best(client, NAME, add_version(client, 0.99, test_set="B", scope="subset"))
    assert champion(client) == "1"
    assert decision == "version 2 does not compete for champion: it was scored on a subset of the test set"
    # A 1-epoch model on the full test set takes nothing from a better one either.
    promote_if_best(client, NAME, add_version(client, 0.60))
    assert champion(client) == "1"


def test_the_first_version_on_a_new_full_test_set_takes_the_alias(client):
    promote_if_best(client, NAME, add_version(client, 0.99, test_set="A"))
    decision = promote_if_best(client, NAME, add_version(client, 0.90, test_set="B"))
    assert champion(client) == "2"
    assert decision.endswith("the first scored on this full test set")


def test_a_registered_model_made_without_a_description_gets_one_and_a_users_stays(client):
    client.create_registered_model(NAME)
    add_version(client, 0.95)
    assert CHAMPION in client.get_registered_model(NAME).description
    client.update_registered_model(NAME, description="the team's digits models")
    add_version(client, 0.96)
    assert client.get_registered_model(NAME).description == "the team's digits models"


def test_scoring_the_champion_again_says_it_stays(client):
    run = client.create_run("0")
    promote_if_best(client, NAME, add_version(client, 0.95, run=run))
    # evaluate run again on the same run: the same version, the alias where it was
    decision = promote_if_best(client, NAME, add_version(client, 0.95, run=run))
    assert (
        decision
        == "version 1 stays the champion with test accuracy 0.9500, the only version scored on this full test set"
    )
    promote_if_best(client, NAME, add_version(client, 0.90))
    decision = promote_if_best(client, NAME, add_version(client, 0.95, run=run))
    assert champion(client) == "1"
    assert decision == (
        "version 1 stays the champion with test accuracy 0.9500, ahead of version 2's 0.9000 on the same full test set"
    )
