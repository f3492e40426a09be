"""Figures of emotion inside speaker embeddings: intra-speaker clusters, cluster pretraining."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.analysis.clustering import source_label
from hcld_lib.experiments.label_budget import CONDITION_LABELS
from hcld_lib.io import HcldError
from hcld_lib.plots.style import finish_figure

CONDITION_COLORS: dict[str, str] = {
    "none": "#7f7f7f",
    "cluster": "#1f77b4",
    "cluster+hcld": "#d62728",
}


def plot_contingency(
    tables: Mapping[str, pd.DataFrame],
    title: str | None = None,
    caption: str | None = None,
    ncols: int = 5,
) -> Figure:
    """Per-speaker cluster x emotion heatmaps (counts, cluster rows aligned to emotions).

    ``tables``: ``{speaker: DataFrame}`` from ``analysis.clustering.contingency_tables``.
    A speaker space that hides emotion as intra-speaker clusters shows heavy diagonals.
    """
    if not tables:
        raise HcldError("plot_contingency needs at least one speaker table")
    n = len(tables)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.5 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (spk, t) in zip(axes.ravel(), tables.items()):
        counts = t.to_numpy(dtype=float)
        ax.imshow(counts, cmap="Blues", vmin=0, aspect="auto")
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * counts.max() else "black")
        ax.set_xticks(range(t.shape[1]), list(t.columns), fontsize=8)
        ax.set_yticks(range(t.shape[0]), list(t.index), fontsize=8)
        ax.set_title(str(spk), fontsize=9)
    return finish_figure(fig, title or "Intra-speaker clusters x emotions", caption)


def plot_nmi_bars(
    table: pd.DataFrame,
    metric: str = "nmi",
    title: str | None = None,
    caption: str | None = None,
) -> Figure:
    """Bars of the intra-speaker agreement (mean ± std over speakers) for each speaker space.

    ``table``: from ``analysis.clustering.compare_speaker_spaces`` (one row per source).
    The shuffled floor is drawn as a black bar-wide line with its std, the global clustering
    (ignoring the speaker, scored within speakers) as a grey diamond.
    """
    needed = [f"{metric}_mean", f"{metric}_std", f"{metric}_shuffled_mean",
              f"{metric}_shuffled_std", f"{metric}_global_within_mean"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise HcldError(
            f"plot_nmi_bars: table lacks columns {missing} (build it with compare_speaker_spaces)"
        )
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(1.3 * len(table) + 3, 3.8))
    colors = ["#2ca02c" if not str(s).startswith("X_s:") else "#1f77b4" for s in table["source"]]
    ax.bar(x, table[f"{metric}_mean"], yerr=table[f"{metric}_std"], color=colors, capsize=4,
           alpha=0.85, label=f"intra-speaker k-means ({metric.upper()})")
    for i, (m, s) in enumerate(zip(table[f"{metric}_shuffled_mean"],
                                   table[f"{metric}_shuffled_std"])):
        ax.hlines(m, i - 0.4, i + 0.4, color="black", lw=2,
                  label="emotions shuffled within speaker (floor)" if i == 0 else None)
        ax.fill_between([i - 0.4, i + 0.4], m - s, m + s, color="black", alpha=0.12, lw=0)
    ax.plot(x, table[f"{metric}_global_within_mean"], "D", color="0.45", ms=6,
            label="global k-means (ignores speaker)")
    ax.set_xticks(x, [source_label(s) for s in table["source"]], rotation=20, ha="right")
    ax.set_ylabel(f"{metric.upper()} (clusters vs emotions)")
    top = float(np.nanmax(table[f"{metric}_mean"] + table[f"{metric}_std"]))
    ax.set_ylim(0, max(0.1, 1.25 * top))
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return finish_figure(fig, title or "Emotion inside speaker spaces", caption)


def plot_label_budget(
    summary: pd.DataFrame,
    metric: str = "ua",
    title: str | None = None,
    caption: str | None = None,
) -> Figure:
    """Emotion ``metric`` (percent, mean ± std over folds x seeds) against the labelled fraction,
    one line per
    condition. ``summary``: from ``experiments.label_budget.summarize_label_budget``."""
    need = ["condition", "train_fraction", f"{metric}_mean", f"{metric}_std"]
    missing = [c for c in need if c not in summary.columns]
    if missing:
        raise HcldError(f"plot_label_budget: summary lacks columns {missing}")
    fig, ax = plt.subplots(figsize=(6, 4))
    for cond, g in summary.groupby("condition", sort=False):
        g = g.sort_values("train_fraction")
        ax.errorbar(100 * g["train_fraction"], g[f"{metric}_mean"],
                    yerr=g[f"{metric}_std"].fillna(0.0), marker="o", capsize=4,
                    label=CONDITION_LABELS.get(str(cond), str(cond)),
                    color=CONDITION_COLORS.get(str(cond)))
    ax.set_xscale("log")
    fr = sorted(summary["train_fraction"].unique())
    ax.set_xticks([100 * f for f in fr], [f"{100 * f:g}%" for f in fr])
    ax.minorticks_off()
    ax.set_xlabel("labelled share of the training part")
    ax.set_ylabel(f"test emotion {metric.upper()} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig, title or "Label budget: cluster-based pretraining", caption)


def plot_pretrain_loss(
    histories: Mapping[str, pd.DataFrame],
    columns: Sequence[str] = ("loss_cluster", "loss_speaker_ce", "loss"),
    title: str | None = None,
    caption: str | None = None,
    held_out: str = "val_cluster_loss",
    kept: Mapping[str, int] | None = None,
) -> Figure:
    """Pretraining loss per epoch, one line per history (e.g. per fold) and loss term: the
    training terms on the left, the held-out cluster loss that decides the length on the right
    (when the histories have it), with a circle at each history's kept epoch (``kept``).

    ``histories``: ``{label: DataFrame}`` with an ``epoch`` column and loss columns (the
    history of ``training.pretrain.pretrain_emotion_encoder``; ``loss`` is the total).
    """
    if not histories:
        raise HcldError("plot_pretrain_loss needs at least one history")
    with_held = any(held_out in h.columns and h[held_out].notna().any()
                    for h in histories.values())
    fig, axes = plt.subplots(1, 2 if with_held else 1, figsize=(10 if with_held else 6, 3.8),
                             squeeze=False)
    ax = axes[0, 0]
    styles = {"loss_cluster": "-", "loss_speaker_ce": "--", "loss": ":"}
    for i, (label, h) in enumerate(histories.items()):
        color = plt.cm.tab10(i % 10)
        multitask = "loss_speaker_ce" in h.columns and h["loss_speaker_ce"].notna().any()
        for col in columns:
            if col == "loss" and not multitask:
                continue  # the total is the cluster loss itself
            if col in h.columns and h[col].notna().any():
                ax.plot(h["epoch"], h[col], styles.get(col, "-"), marker=".", color=color,
                        label=f"{label}: {col.removeprefix('loss_') if col != 'loss' else 'total'}")
        if with_held and held_out in h.columns:
            axes[0, 1].plot(h["epoch"], h[held_out], "-", marker=".", color=color, label=label)
            if kept and label in kept:
                at = h[h["epoch"] == kept[label]]
                axes[0, 1].plot(at["epoch"], at[held_out], "o", ms=9, mfc="none", color=color)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over batches)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if with_held:
        held = axes[0, 1]
        held.set_xlabel("epoch")
        held.set_ylabel("held-out cluster loss (validation part)")
        held.set_title("what decides the length (circle: the kept epoch)", fontsize=9)
        held.grid(alpha=0.3)
        held.legend(fontsize=7)
    return finish_figure(fig, title or "Cluster-based contrastive pretraining", caption)
