"""Stage `validate`: refuse a params.yaml that no stage would accept, whatever changed in it. Reads all of it (so
that any change, even an unknown key, runs this stage: docs/configuration.md, "Validation"); writes nothing.
"""

from __future__ import annotations

import logging

from pipeline.config import load_params
from pipeline.paths import PARAMS_FILE
from pipeline.stage import run_stage

logger = logging.getLogger(__name__)


def main() -> None:
    load_params()
    logger.info("%s is valid", PARAMS_FILE)


if __name__ == "__main__":
    run_stage(main)
