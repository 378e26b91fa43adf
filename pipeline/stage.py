"""How every stage and `mlp` command runs: `python -m pipeline.<stage>` and `mlp <command>` call `run_stage(main)`.

It sets up logging and turns SIGTERM into Ctrl+C (and takes SIGINT back), so that a stopped run ends its MLflow
run KILLED and exits with status 130. An error of ours (pipeline.errors) becomes one or two lines on stderr and exit
status 1, without a traceback (MLP_TRACEBACK=1 shows it); anything else is a bug and keeps its traceback.
"""

import logging
import os
import signal
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError

logger = logging.getLogger("pipeline")


def _raise_keyboard_interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    # `dvc exp remove --queue`/`kill` and CI timeouts send SIGTERM: treat it like
    # Ctrl-C so an open MLflow run is marked KILLED instead of staying RUNNING.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # A command started in the background by a script inherits SIGINT as
    # ignored; `dvc queue kill` and Ctrl+C send SIGINT, so take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except PipelineError as error:
        if os.environ.get("MLP_TRACEBACK"):
            raise
        logger.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)
