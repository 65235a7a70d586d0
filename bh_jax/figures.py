"""Matplotlib figures without pyplot, written atomically (QC figures, demo, tables)."""

from __future__ import annotations

import os
from pathlib import Path

from bh_jax.io import atomic_path


def new_figure(rows: int, cols: int, figsize: tuple[float, float]):
    """(figure, [rows, cols] axes) without pyplot: no global backend is touched,
    so library figures work in scripts, servers and notebooks alike."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, cols, squeeze=False)


def save_figure(figure, path: str | os.PathLike, dpi: int = 90) -> Path:
    """Writes a matplotlib figure as PNG atomically (`atomic_path`)."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
