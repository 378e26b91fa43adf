"""Stage `validate`: refuse a params.yaml that no stage would accept, whatever changed in it.

Reads all of params.yaml; writes nothing. Every stage validates the whole file
before it works, but DVC runs a stage only when a key it declares changed: an
unknown key (`dvc exp run -S +foo=1`, or a line added to params.yaml) would
otherwise be recorded as an experiment without any stage noticing. This stage
declares the whole file, so any change runs it, and a bad one fails the run.
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
