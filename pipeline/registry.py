"""The Model Registry: what each registered version is, and which one is the champion.

Every trained model is registered (pipeline.tracking.log_model) as a new version
of `mlflow.registered_model_name`. The evaluate stage then describes the
version (a one-line description and tags: dataset, test accuracy, run, commit)
and moves the alias `champion` to it only when it beats the current champion's
test accuracy on the same test set, so `models:/<name>@champion` always serves
the best model measured so far.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION = "champion"


def describe_version(client: MlflowClient, name: str, version: str, *, description: str, tags: dict[str, str]) -> None:
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote_if_better(client: MlflowClient, name: str, version: str, *, test_set: str, accuracy: float) -> str:
    """Move the champion alias to `version` if it beats the champion on the same test set; say what was decided."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) != str(version):
        same_test_set = champion.tags.get("test_set") == test_set
        best = float(champion.tags.get("test_accuracy", "nan"))
        if same_test_set and not accuracy > best:
            decision = f"kept version {champion.version} as {CHAMPION}: {best:.4f} >= {accuracy:.4f}"
            client.set_model_version_tag(name, version, "champion_decision", decision)
            return decision
    client.set_registered_model_alias(name, CHAMPION, version)
    previous = f"replaces version {champion.version}" if champion is not None else "the first"
    decision = f"version {version} is the {CHAMPION} ({previous}) with test accuracy {accuracy:.4f}"
    client.set_model_version_tag(name, version, "champion_decision", decision)
    return decision
