"""Stage `validate`: refuse a params.yaml that no stage would accept, whatever changed in it.

Reads all of params.yaml; writes nothing. DVC runs a stage only when a key it declares changed, so an unknown key
(`dvc exp run -S +foo=1`) would be recorded without any stage noticing: this stage declares the whole file.
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
