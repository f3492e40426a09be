"""Figures of the embedding spaces: UMAP views and the decoupling scorecard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.analysis.decoupling import umap_embed
from hcld_lib.analysis.embeddings import load_run_embeddings
from hcld_lib.io import HcldError
from hcld_lib.method.variants import variant_label
from hcld_lib.plots.style import color_map, finish_figure


def _scatter(ax: Any, xy: np.ndarray, labels: np.ndarray, colors: dict[str, Any], kind: str,
             legend: bool) -> None:
    for value, color in colors.items():
        sel = labels == value
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.75, color=color, label=value,
                       linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1", fontsize=8)
    ax.set_ylabel("UMAP 2", fontsize=8)
    if legend:
        ax.legend(title=kind, fontsize=6, title_fontsize=7, markerscale=2.5,
                  ncol=1 if len(colors) <= 5 else 2, loc="best", framealpha=0.7)


def plot_umap_grid(
    runs: Mapping[str, Any], caption: str | None = None, seed: int = 0, n_neighbors: int = 15
) -> Figure:
    """UMAP of test embeddings, variant beside variant.

    Rows: the entries of ``runs`` (name -> embeddings dict / ``embeddings.npz`` path / run
    folder); columns: X_e coloured by emotion, X_e by speaker, X_s by emotion, X_s by speaker.
    One UMAP is fitted per space (seeded), so the two colourings of a space share coordinates.
    X_s panels of a run without a speaker branch (EMO-only) say so.
    """
    if not runs:
        raise HcldError("no runs to plot; pass {variant: embeddings}")
    data = {name: load_run_embeddings(src) for name, src in runs.items()}
    all_emo = np.concatenate([d.emotion for d in data.values()])
    all_spk = np.concatenate([d.speaker for d in data.values()])
    emo_colors = color_map(list(all_emo), "emotion")
    spk_colors = color_map(list(all_spk), "speaker")
    fig, axes = plt.subplots(len(data), 4, figsize=(15, 3.5 * len(data)), squeeze=False)
    for r, (name, d) in enumerate(data.items()):
        emotion, speaker = d.emotion, d.speaker
        for c0, space in ((0, "x_e"), (2, "x_s")):
            sym = "X_e" if space == "x_e" else "X_s"
            x = d.x_e if space == "x_e" else d.x_s
            if x is None:
                for c in (c0, c0 + 1):
                    axes[r, c].text(0.5, 0.5, f"{variant_label(name)}:\nno speaker branch",
                                    ha="center", va="center", transform=axes[r, c].transAxes)
                    axes[r, c].set_axis_off()
                continue
            xy = umap_embed(x, seed=seed, n_neighbors=n_neighbors)
            _scatter(axes[r, c0], xy, emotion, emo_colors, "emotion", legend=True)
            _scatter(axes[r, c0 + 1], xy, speaker, spk_colors, "speaker", legend=True)
            axes[r, c0].set_title(f"{variant_label(name)}: {sym} by emotion", fontsize=10)
            axes[r, c0 + 1].set_title(f"{variant_label(name)}: {sym} by speaker", fontsize=10)
    return finish_figure(fig, "Test embeddings (UMAP, cosine)", caption)


_PROBES: tuple[tuple[str, str, str], ...] = (
    ("speaker_from_x_e_bacc", "speaker", "speaker from X_e (leak, lower = decoupled)"),
    ("emotion_from_x_s_bacc", "emotion", "emotion from X_s (leak, lower = decoupled)"),
    ("emotion_from_x_e_bacc", "emotion", "emotion from X_e (wanted)"),
    ("speaker_from_x_s_bacc", "speaker", "speaker from X_s (wanted)"),
)
_SILS: tuple[tuple[str, str], ...] = (
    ("sil_x_e_emotion", "X_e by emotion"),
    ("sil_x_e_speaker", "X_e by speaker"),
    ("sil_x_s_emotion", "X_s by emotion"),
    ("sil_x_s_speaker", "X_s by speaker"),
)


def plot_scorecard(df: pd.DataFrame, caption: str | None = None) -> Figure:
    """The decoupling scorecard (rows of :func:`hcld_lib.analysis.decoupling.scorecard_table`).

    Left: balanced accuracy of the four linear probes per run, with chance (1 / n_classes)
    dashed. Right: cosine silhouettes of X_e and X_s by emotion and by speaker.
    Missing values (EMO-only has no X_s) are left blank.
    """
    if df.empty:
        raise HcldError("the scorecard is empty; run decoupling.scorecard_table first")
    runs = [str(i) for i in df.index]
    labels = [variant_label(r) for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    width = 0.8 / len(_PROBES)
    x = np.arange(len(runs))
    cmap = plt.get_cmap("tab10")
    ax = axes[0]
    for k, (col, target, label) in enumerate(_PROBES):
        if col not in df:
            continue
        vals = 100 * df[col].to_numpy(dtype=float)
        bars = ax.bar(x + (k - 1.5) * width, np.nan_to_num(vals), width, color=cmap(k), label=label)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0f}" for v in vals], fontsize=6)
        chance_col = f"{target}_chance_balanced"
        if chance_col in df:
            for xi, ch, v in zip(x, df[chance_col].to_numpy(dtype=float), vals):
                if not np.isnan(v):
                    ax.hlines(100 * ch, xi + (k - 2) * width, xi + (k - 1) * width, colors="k",
                              linestyles="--", lw=1)
    ax.set_xticks(x, labels)
    ax.set(title="Linear probes (balanced accuracy; dashes = chance)", xlabel="variant",
           ylabel="balanced accuracy (%)", ylim=(0, 130))
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, loc="upper center", ncol=2)

    ax = axes[1]
    for k, (col, label) in enumerate(_SILS):
        if col not in df:
            continue
        vals = df[col].to_numpy(dtype=float)
        ax.bar(x + (k - 1.5) * width, np.nan_to_num(vals), width, color=cmap(k + 4), label=label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set(title="Cosine silhouettes (higher = clustered by that label)", xlabel="variant",
           ylabel="silhouette")
    ax.legend(fontsize=7, loc="best", ncol=2)
    return finish_figure(fig, "Decoupling scorecard (test embeddings)", caption)


