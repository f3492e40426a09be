"""The house style of every figure: colours, the title, the provenance caption, saving.

Each figure function of :mod:`hcld_lib.plots` returns a :class:`matplotlib.figure.Figure` and takes
an optional ``caption`` — the provenance line (profile, corpus, backbone, protocol) — printed at
the bottom of the figure, so a PNG found on its own still says what made it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hcld_lib.data.labels import emotion_order
from hcld_lib.io import atomic_write_bytes

#: Fixed colours so an emotion has the same colour in every figure.
EMOTION_COLORS: dict[str, str] = {
    "neu": "#7f7f7f",
    "hap": "#ff7f0e",
    "ang": "#d62728",
    "sad": "#1f77b4",
}

#: Fixed colours of the verdicts (:mod:`hcld_lib.analysis.stats`).
VERDICT_COLORS: dict[str, str] = {"held": "#2ca02c", "contradicted": "#d62728",
                                  "not shown": "#7f7f7f", "too few runs": "#bbbbbb"}


def finish_figure(fig: Figure, title: str | None, caption: str | None) -> Figure:
    """Add the bold title and the provenance caption at the bottom, then lay the figure out."""
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    rect_bottom = 0.0
    if caption:
        fig.text(0.5, 0.005, caption, ha="center", va="bottom", fontsize=8, color="0.35")
        rect_bottom = 0.035
    fig.tight_layout(rect=(0, rect_bottom, 1, 0.96 if title else 1))
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (parent folders are created)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())




def color_map(values: Sequence[str], kind: str) -> dict[str, Any]:
    """Stable colours: fixed for the four emotions, tab10/tab20 for speakers and others."""
    ordered = emotion_order(values) if kind == "emotion" else sorted(set(map(str, values)))
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    colors = {}
    for i, v in enumerate(ordered):
        colors[v] = EMOTION_COLORS.get(v) if kind == "emotion" and v in EMOTION_COLORS else None
        if colors[v] is None:
            colors[v] = cmap(i % cmap.N)
    return colors
