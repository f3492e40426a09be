"""Figures of the method on one batch: the ICLD pair masks, and where each term's gradient goes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.io import HcldError
from hcld_lib.plots.style import finish_figure


def plot_pair_masks(labels: pd.DataFrame, positive: np.ndarray, negative: np.ndarray,
                    caption: str | None = None) -> Figure:
    """The positive (same speaker, different emotion) and negative (different speaker, same
    emotion) pairs of one batch as ``[B, B]`` matrices, the utterances sorted by speaker then
    emotion so that the blocks show; each axis labelled ``speaker/emotion``.

    ``labels``: one row per utterance in batch order (``speaker``, ``emotion``); ``positive``,
    ``negative``: ``[B, B]`` booleans in the same order.
    """
    positive, negative = np.asarray(positive, bool), np.asarray(negative, bool)
    b = len(labels)
    if positive.shape != (b, b) or negative.shape != (b, b):
        raise HcldError(f"plot_pair_masks: masks must be [{b}, {b}] for {b} utterances, got "
                        f"{positive.shape} and {negative.shape}")
    order = np.lexsort((labels["emotion"].to_numpy(), labels["speaker"].to_numpy()))
    names = [f"{s}/{e}" for s, e in zip(labels["speaker"].to_numpy()[order],
                                        labels["emotion"].to_numpy()[order])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
    for ax, mask, title, color in (
            (axes[0], positive, "positive pairs x+: same speaker, different emotion", "Greens"),
            (axes[1], negative, "negative pairs x-: different speaker, same emotion", "Reds")):
        ax.imshow(mask[np.ix_(order, order)], cmap=color, vmin=0, vmax=1.4,
                  interpolation="nearest")
        step = max(1, b // 32)
        ticks = np.arange(0, b, step)
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=5)
        ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=5)
        ax.set_title(f"{title}\n{int(mask.sum()) // 2} pairs", fontsize=9)
    return finish_figure(fig, "ICLD's pairs in one batch (utterances sorted by speaker, emotion)",
                         caption)


def plot_gradient_reach(tables: dict[str, pd.DataFrame], caption: str | None = None) -> Figure:
    """Where each term's gradient goes, one panel per branches layout: rows = terms (and their
    parts), columns = parameter groups, colour = the gradient's norm (log scale), a dot where it
    is exactly zero.

    ``tables``: ``{layout: hcld_lib.training.one_batch.gradient_reach(...)}``.
    """
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.6), squeeze=False)
    for ax, (layout, table) in zip(axes[0], tables.items()):
        values = table.to_numpy(dtype=float)
        shown = np.log10(np.where(values > 0, values, np.nan))
        image = ax.imshow(shown, cmap="viridis", aspect="auto")
        rows, cols = np.nonzero(values == 0)
        ax.plot(cols, rows, "o", ms=4, mfc="white", mec="0.4", ls="")
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(table.shape[0]), table.index, fontsize=8)
        ax.set_title(f"branches = {layout!r}", fontsize=10)
        fig.colorbar(image, ax=ax, label="log10 |gradient|", shrink=0.8)
    return finish_figure(fig, "Which parameters each term reaches (white dot: exactly zero)",
                         caption)
