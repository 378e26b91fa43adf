"""Saving Matplotlib figures (the backend is set once, in pipeline/__init__.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from pipeline.files import atomic_path


def save_figure(figure: Figure, path: Path) -> None:
    """Save a figure as PNG, atomically, and free it (pyplot keeps every open figure alive)."""
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)
