"""How every stage and `mlp` command runs (docs/crash-safety.md): SIGTERM and SIGINT end it as Ctrl+C would (its
MLflow run KILLED, status 130); an error of ours (pipeline.errors) or a failure of the MLflow store or the disk is
one line and status 1. Anything else is a bug and keeps its traceback.
"""

import errno
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from pipeline.errors import PipelineError

logger = logging.getLogger("pipeline")


# Set by SIGINT or SIGTERM. Python drops an exception raised while a finalizer runs ("Exception ignored in
# ..."), so a signal arriving then would be lost: the training loop checks the flag after every epoch.
INTERRUPTED = threading.Event()


def _raise_keyboard_interrupt(signal_number: int, frame: object) -> None:
    # Only the first signal counts. Ctrl+C in a terminal reaches the whole process group and `mlp study` or
    # `mlp search` passes it on: a repeat would cut short the cleanup that ends the MLflow run KILLED, or, once
    # Python has put back the default handlers on its way out, kill the process (status -2 instead of 130).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    INTERRUPTED.set()
    raise KeyboardInterrupt(f"signal {signal_number}")


def raise_if_interrupted() -> None:
    """Raise the KeyboardInterrupt of a SIGINT or SIGTERM that Python dropped (see INTERRUPTED)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt("interrupted")


def interrupted(error: BaseException) -> bool:
    """Whether `error` ends the program as an interruption: a KeyboardInterrupt, or the error TensorFlow raised
    instead of the signal's KeyboardInterrupt when it landed while a function was traced (SystemError, ValueError)."""
    return isinstance(error, KeyboardInterrupt) or INTERRUPTED.is_set()


# Where MLflow's client, its HTTP stack and its database layer raise from.
TRACKING_PACKAGES = {"mlflow", "requests", "urllib3", "sqlalchemy"}
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}


def causes(error: BaseException) -> list[BaseException]:
    """The error and the errors it was raised from or during, the first failure last; an interruption they were
    raised while handling is not one of them."""
    chain = [error]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        if isinstance(cause, KeyboardInterrupt):
            break
        chain.append(cause)
    return chain


def raised_by_the_store(error: BaseException) -> bool:
    return any(type(link).__module__.split(".")[0] in TRACKING_PACKAGES for link in causes(error))


def outside_failure(error: BaseException) -> str | None:
    """One line for a failure of the MLflow store, a search's study storage or the disk, naming what failed first;
    None for anything else."""
    chain = causes(error)
    first = " ".join(f"{type(chain[-1]).__name__}: {chain[-1]}".split())[:300]
    if any(isinstance(link, OSError) and link.errno in DISK_ERRORS for link in chain):
        return f"{first}: free space or fix permissions there, then run the stage again (the run resumes)"
    if "optuna" in {type(link).__module__.split(".")[0] for link in chain}:
        # A search trial's study database, also reached through SQLAlchemy: not MLflow's.
        return (
            f"the search's study storage failed: {first}; check its database is up (`mlp server status` for the "
            "team server): `mlp search` continues the study where it stopped"
        )
    if raised_by_the_store(error):
        uri = os.environ.get("MLFLOW_TRACKING_URI", "the MLflow store")
        return (
            f"MLflow store {uri} failed: {first}; check it is up and writable (`mlp server status` for the team "
            "server) or set MLFLOW_TRACKING_URI, then run the stage again (the run resumes)"
        )
    return None


def run_stage(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not os.environ.get("MLP_TRACEBACK"):
        # MLflow's SQL store logs every database error with its traceback, then raises it: the raised error
        # is the stage's one line (outside_failure), so the logged copy would only bury it.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # SIGTERM: `dvc exp remove --queue`/`kill` and CI timeouts. SIGINT: `dvc queue kill` and Ctrl+C; a command
    # a script starts in the background inherits it as ignored, so take it back.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        main()
    except (KeyboardInterrupt, Exception) as error:
        if interrupted(error):
            # A store or disk failure while the stage ended (its run then not KILLED) is named as well.
            failure = None if isinstance(error, KeyboardInterrupt) else outside_failure(error)
            logger.error("interrupted%s", f"; then {failure}" if failure else "")
            sys.exit(130)
        failure = str(error) if isinstance(error, PipelineError) else outside_failure(error)
        if failure is None or os.environ.get("MLP_TRACEBACK"):
            raise
        logger.error("%s", failure)
        sys.exit(1)
