"""The champion alias moves to a new version only when it beats the champion on the same test set."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.registry import CHAMPION, describe_version, promote_if_better


def test_the_champion_moves_only_on_improvement(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("digits-mlp")
    versions = [client.create_model_version("digits-mlp", source=str(tmp_path)).version for _ in range(4)]
    scores = {versions[0]: 0.95, versions[1]: 0.97, versions[2]: 0.96, versions[3]: 0.50}
    for version in versions[:3]:
        describe_version(
            client,
            "digits-mlp",
            version,
            description="d",
            tags={"test_accuracy": str(scores[version]), "test_set": "A"},
        )
    promote_if_better(client, "digits-mlp", versions[0], test_set="A", accuracy=0.95)
    assert client.get_model_version_by_alias("digits-mlp", CHAMPION).version == versions[0]
    promote_if_better(client, "digits-mlp", versions[1], test_set="A", accuracy=0.97)
    assert client.get_model_version_by_alias("digits-mlp", CHAMPION).version == versions[1]
    decision = promote_if_better(client, "digits-mlp", versions[2], test_set="A", accuracy=0.96)
    assert client.get_model_version_by_alias("digits-mlp", CHAMPION).version == versions[1]
    assert decision.startswith(f"kept version {versions[1]}")
    assert client.get_model_version("digits-mlp", versions[2]).tags["champion_decision"] == decision
    # Measured on other data, the accuracies do not compare: the newer measurement takes the alias.
    describe_version(client, "digits-mlp", versions[3], description="d", tags={"test_accuracy": "0.5", "test_set": "B"})
    promote_if_better(client, "digits-mlp", versions[3], test_set="B", accuracy=0.50)
    assert client.get_model_version_by_alias("digits-mlp", CHAMPION).version == versions[3]
