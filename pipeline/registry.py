"""The Model Registry: one described version per evaluated run, and the alias `champion` on the best test accuracy
among the versions scored on the same full test set (docs/mlflow.md, "The Model Registry and the champion")."""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from pipeline.tracking import check_managed_by_admin

CHAMPION = "champion"
# Tags every version gets; the champion decision reads test_accuracy, test_set and test_scope.
ACCURACY_TAG, TEST_SET_TAG, SCOPE_TAG = "test_accuracy", "test_set", "test_scope"
MODEL_DESCRIPTION = (
    f"Keras MLPs of this pipeline, one version per evaluated run, each described by its test accuracy first. "
    f"@{CHAMPION}: the best test accuracy on the full test set."
)


def register(
    client: MlflowClient, name: str, *, run_id: str, model_uri: str, description: str, tags: dict[str, str]
) -> str:
    """The version of `name` holding run `run_id`'s model: the one registered before (a re-run or a resumed
    evaluate), else a new one, created with its description and tags in one call so that it is never incomplete."""
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    check_managed_by_admin("registered_model", name, name)
    if not client.get_registered_model(name).description:  # made elsewhere, undescribed; a user's text stays
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        version = str(found[0].version)
        client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        return version
    created = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, description=description, model_id=model_uri.removeprefix("models:/")
    )
    return str(created.version)


def promote_if_best(client: MlflowClient, name: str, version: str) -> str:
    """Give the champion alias to the best version scored on `version`'s full test set; say what was decided."""
    this = client.get_model_version(name, version)
    if this.tags.get(SCOPE_TAG) != "full":
        decision = f"version {version} does not compete for {CHAMPION}: it was scored on a subset of the test set"
    else:
        rivals = [
            candidate
            for candidate in client.search_model_versions(f"name = '{name}'")
            if candidate.tags.get(SCOPE_TAG) == "full" and candidate.tags.get(TEST_SET_TAG) == this.tags[TEST_SET_TAG]
        ]
        # The best accuracy; on a tie the version that reached it first.
        best = max(rivals, key=lambda candidate: (_accuracy(candidate), -int(candidate.version)))
        # Scoring the champion again (a re-run of evaluate) keeps the alias where it was: not a new decision.
        kept = str(client.get_registered_model(name).aliases.get(CHAMPION)) == str(best.version)
        client.set_registered_model_alias(name, CHAMPION, best.version)
        held = f"version {version} {'stays' if kept else 'is'} the {CHAMPION} with test accuracy {_accuracy(this):.4f}"
        beaten = max((other for other in rivals if str(other.version) != version), key=_accuracy, default=None)
        if str(best.version) != version:
            decision = (
                f"version {best.version} stays the {CHAMPION}: its test accuracy {_accuracy(best):.4f} is not "
                f"beaten by version {version}'s {_accuracy(this):.4f} on the same full test set"
            )
        elif beaten:
            against = "ahead of" if kept else "beating"
            decision = f"{held}, {against} version {beaten.version}'s {_accuracy(beaten):.4f} on the same full test set"
        else:
            decision = f"{held}, the {'only version' if kept else 'first'} scored on this full test set"
    client.set_model_version_tag(name, version, "champion_decision", decision)
    return decision


def _accuracy(version: ModelVersion) -> float:
    return float(version.tags.get(ACCURACY_TAG, "nan"))
