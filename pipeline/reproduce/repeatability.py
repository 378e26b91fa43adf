"""Whether training is repeatable here: the current configuration trained twice, in separate
processes, gives the same weights (`mlp reproduce --repeatability`)."""

from __future__ import annotations

import logging
import subprocess
import sys

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)


def check_repeatability(repetitions: int = 2) -> list[str]:
    """Train the current configuration `repetitions` times in separate processes; return the weights hashes."""
    hashes = []
    for attempt in range(1, repetitions + 1):
        logger.info("training %d of %d", attempt, repetitions)
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.train", "--hash-only"], stdout=subprocess.PIPE, text=True
        )
        if result.returncode != 0:
            raise PipelineError(f"training {attempt} of {repetitions} failed (exit status {result.returncode})")
        hashes.append(result.stdout.strip().splitlines()[-1])
    return hashes
