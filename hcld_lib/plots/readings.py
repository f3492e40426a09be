"""The figure of the open points: each reading's HCLD differences with their intervals."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.io import HcldError
from hcld_lib.plots.style import finish_figure

VERDICT_COLORS: dict[str, str] = {"held": "#2ca02c", "contradicted": "#d62728",
                                  "not shown": "#7f7f7f", "too few runs": "#bbbbbb"}


def plot_readings(table: pd.DataFrame, caption: str | None = None) -> Figure:
    """A forest plot: one row per reading, one panel per comparison (HCLD vs EMO-only, HCLD vs
    orth); per architecture the mean emotion-UA difference with its 95 % interval, coloured by
    verdict, the paper's difference as a cross, and zero as a line.

    ``table``: :func:`hcld_lib.experiments.readings.readings_table`.
    """
    need = {"reading", "arch", "comparison", "mean", "ci_low", "ci_high", "verdict", "paper"}
    if not need <= set(table.columns):
        raise HcldError(f"plot_readings: table lacks {sorted(need - set(table.columns))}")
    readings = list(dict.fromkeys(table["reading"]))
    comparisons = list(dict.fromkeys(table["comparison"]))
    archs = list(dict.fromkeys(table["arch"]))
    offsets = np.linspace(-0.25, 0.25, len(archs)) if len(archs) > 1 else np.zeros(1)
    markers = dict(zip(archs, "osD^v"))
    fig, axes = plt.subplots(1, len(comparisons), figsize=(6 * len(comparisons),
                                                           0.45 * len(readings) + 1.8),
                             squeeze=False, sharey=True)
    y = np.arange(len(readings))[::-1]
    for ax, comp in zip(axes[0], comparisons):
        sub = table[table["comparison"] == comp]
        for arch, dy in zip(archs, offsets):
            rows = sub[sub["arch"] == arch].set_index("reading").reindex(readings)
            for yi, (_, r) in zip(y + dy, rows.iterrows()):
                if pd.isna(r["mean"]):
                    continue
                color = VERDICT_COLORS.get(r["verdict"], "#7f7f7f")
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=color, lw=2)
                ax.plot(r["mean"], yi, markers[arch], color=color, ms=5)
                if not pd.isna(r["paper"]):
                    ax.plot(r["paper"], yi, "x", color="black", ms=5)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, readings, fontsize=8)
        ax.set_title(f"{comp}: emotion UA difference (points)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=c, lw=2, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [plt.Line2D([], [], marker=markers[a], ls="", color="0.3", label=a) for a in archs]
    handles.append(plt.Line2D([], [], marker="x", ls="", color="black", label="paper"))
    axes[0, -1].legend(handles=handles, fontsize=7, loc="lower right")
    return finish_figure(fig, "The open points: does HCLD beat its baselines under each reading?",
                         caption)
