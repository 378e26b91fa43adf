"""The pipeline's experiment and registered model names, created as the admin when the server starts.

MLflow lets any user create an experiment or a registered model, and its creator manages it: a user
who took one of the pipeline's names first could tag everyone's runs or move `@champion` to a model
of their own. `mlp server start` therefore creates every name conf/ composes to, as the admin, and the
pipeline refuses names a user other than an admin manages (pipeline.tracking.check_managed_by_admin).
"""

import logging
from pathlib import Path

from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from pipeline.config import compose, read_yaml
from pipeline.paths import CONFIG_DIRECTORY
from pipeline.server.state import ADMIN_USERNAME, ServerError

logger = logging.getLogger(__name__)


def pipeline_names(config_directory: Path = CONFIG_DIRECTORY) -> tuple[set[str], set[str]]:
    """(experiment names, registered model names): the default config with each dataset, and each experiment file."""
    if not (config_directory / "config.yaml").is_file():
        return set(), set()  # not started from the repository: nothing to reserve
    overrides = [
        f"{group}={path.stem}"
        for group in ("dataset", "experiment")
        for path in (config_directory / group).glob("*.yaml")
    ]
    experiments, models = set(), set()
    for override in overrides:
        names = read_yaml(compose([override], config_directory), f"conf/ with {override}")["mlflow"]
        experiments.add(names["experiment_name"])
        models.add(names["registered_model_name"])
    return experiments, models


def create_as_admin(url: str, password: str) -> None:
    """Create the pipeline's names that do not exist yet, as the admin (who then manages them)."""
    experiments, models = pipeline_names()
    credentials = MlflowHostCreds(url, username=ADMIN_USERNAME, password=password)
    requests = [("experiments/create", name) for name in sorted(experiments)]
    requests += [("registered-models/create", name) for name in sorted(models)]
    for endpoint, name in requests:
        response = http_request(credentials, f"/api/2.0/mlflow/{endpoint}", "POST", json={"name": name})
        if response.status_code != 200 and "RESOURCE_ALREADY_EXISTS" not in response.text:
            raise ServerError(f"creating '{name}' as the admin failed: HTTP {response.status_code} {response.text}")
    logger.info("experiments %s and registered models %s belong to the admin", sorted(experiments), sorted(models))
