"""The errors a user can cause, and how a stage reports them.

A stage's `main()` runs under `run_stage`: an error of ours becomes one or two
lines on stderr and exit status 1, without a traceback (set MLP_TRACEBACK=1 to
see it); anything else is a bug and keeps its traceback.
"""

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

logger = logging.getLogger("pipeline")


class PipelineError(Exception):
    """An error the user can fix: bad config, bad file, unreachable mirror."""


class ConfigError(PipelineError):
    """params.yaml (the composition of conf/) holds a value no stage accepts."""


class DataError(PipelineError):
    """A data file is missing, corrupted, or not in the expected format."""


class DownloadError(PipelineError):
    """No URL served a file that verified."""


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
        # Only a program's own main (`python -m pipeline.<stage>`): a caller in the same
        # process, such as `mlp` or a test calling pipeline.cli.main, goes on running.
        if main.__module__ == "__main__":
            exit_without_teardown()
    except PipelineError as error:
        if os.environ.get("MLP_TRACEBACK"):
            raise
        logger.error("%s", error)
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)


def exit_without_teardown() -> NoReturn:
    """Exit with status 0 once everything is written, skipping the interpreter's teardown.

    With TensorFlow and MLflow loaded, freeing every module and running C++
    destructors takes 1-2 s after the last line of work, on every stage of
    every run. This does what a normal exit does before that teardown, in the
    same order: wait for the other threads (MLflow uploads artifacts from a
    thread pool), run the exit handlers (logging flushes, MLflow ends any open
    run), flush the standard streams; every file a stage writes is closed by then.
    """
    wait_for_threads = getattr(threading, "_shutdown", None)  # CPython's first step at exit
    if wait_for_threads is None or sys.getprofile() or sys.gettrace():
        sys.exit(0)  # another interpreter, or a profiler or coverage that writes its data at exit
    wait_for_threads()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
