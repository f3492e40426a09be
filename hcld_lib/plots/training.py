"""Figures of one run: every loss term and WA / UA per epoch, and the confusion matrix."""

from __future__ import annotations

import re
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hcld_lib.io import HcldError
from hcld_lib.plots.style import finish_figure

_METRIC_RE = re.compile(
    r"^(?P<split>val|test|speaker_test)[_/](?P<task>emotion|speaker|emo|spk)[_/](?P<metric>wa|ua)$"
)


def _metric_columns(history: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    out = {}
    for col in history.columns:
        m = _METRIC_RE.match(str(col))
        if m:
            task = {"emo": "emotion", "spk": "speaker"}.get(m["task"], m["task"])
            out[(task, m["split"], m["metric"])] = col
    return out


def _loss_columns(history: pd.DataFrame) -> list[str]:
    """Loss terms: numeric columns whose name says loss (``loss``, ``loss_*``, ``*_loss``,
    ``train_*``), excluding metrics, learning rate, epoch and timing."""
    metric_cols = set(_metric_columns(history).values())
    skip = re.compile(r"(^epoch$|^lr$|learning_rate|seconds|time|^step$|_acc|_wa$|_ua$|_f1$|"
                      r"^(val|test|speaker_test)_)")
    cols = []
    for col in history.columns:
        name = str(col)
        if col in metric_cols or skip.search(name):
            continue
        if not pd.api.types.is_numeric_dtype(history[col]):
            continue
        if "loss" in name or name.startswith("train_") or name.startswith("l_"):
            cols.append(col)
    return cols


def plot_training_curves(
    history: pd.DataFrame, caption: str | None = None, title: str | None = None,
    selected_epoch: int | None = None,
) -> Figure:
    """Every loss term per epoch, and emotion / speaker WA and UA per epoch on val and test.

    Args:
        history: ``history.csv`` of a run (``epoch``, loss columns, ``<split>_<task>_<wa|ua>``).
        caption: provenance line.
        title: figure title (e.g. the run name).
        selected_epoch: drawn as a dotted vertical line (the epoch chosen on validation).
    """
    if history.empty:
        raise HcldError("history is empty: the run has no finished epoch")
    epoch = history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))
    metrics = _metric_columns(history)
    losses = _loss_columns(history)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    ax = axes[0]
    for col in losses:
        values = history[col].to_numpy(dtype=float)
        if np.all(np.isnan(values)):
            continue
        style = "-" if str(col) in ("loss", "train_loss", "loss_total", "total") else "--"
        lw = 2.2 if style == "-" else 1.3
        ax.plot(epoch, values, style, lw=lw, marker=".", label=str(col))
    ax.set(title="Training losses", xlabel="epoch", ylabel="loss (per batch, mean)")
    if losses:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no loss columns in history", ha="center", transform=ax.transAxes)

    split_style = {"val": "-", "test": "--", "speaker_test": ":"}
    metric_color = {"wa": "#1f77b4", "ua": "#d62728"}
    for ax, task in zip(axes[1:], ("emotion", "speaker")):
        found = False
        for (t, split, metric), col in sorted(metrics.items()):
            if t != task or history[col].isna().all():
                continue
            same = metrics.get((t, "test", metric))
            if split == "speaker_test" and same is not None and history[col].equals(history[same]):
                continue  # the paper protocol measures speakers on the test part itself
            found = True
            ax.plot(epoch, 100 * history[col].astype(float), split_style.get(split, "-"),
                    color=metric_color[metric], marker=".", label=f"{split} {metric.upper()}")
        ax.set(title=f"{task.capitalize()} WA / UA", xlabel="epoch", ylabel="%")
        if found:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {task} metrics (no {task} head?)", ha="center",
                    transform=ax.transAxes)

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if selected_epoch is not None:
        for ax in axes:
            ax.axvline(selected_epoch, color="k", ls=":", lw=1)
        axes[1].annotate("selected (val)", (selected_epoch, 0.02),
                         xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right")
    return finish_figure(fig, title or "Training curves", caption)



def plot_confusion(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], caption: str | None = None,
    title: str = "Emotion confusion (test)",
) -> Figure:
    """A confusion matrix (rows = true, columns = predicted) as counts and row-normalised %."""
    cm = np.asarray(confusion, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(labels):
        raise HcldError(f"confusion {cm.shape} does not match {len(labels)} labels")
    rows = cm.sum(axis=1, keepdims=True)
    pct = np.divide(100 * cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 1.8))
    image = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{int(v)}\n{pct[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=ax, label="% of true class")
    return finish_figure(fig, title, caption)
