"""Every figure of the companion: each function returns a :class:`matplotlib.figure.Figure`.

Each takes an optional ``caption`` — the provenance line (profile, corpus, backbone, protocol;
see :func:`provenance`) — printed at the bottom of the figure, so a PNG found on its own still
says what made it. :func:`save_figure` writes a PNG atomically.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.config import EMOTIONS
from hcld_lib.io import HcldError, atomic_write_bytes

#: Fixed colours so an emotion has the same colour in every figure.
EMOTION_COLORS: dict[str, str] = {
    "neu": "#7f7f7f",
    "hap": "#ff7f0e",
    "ang": "#d62728",
    "sad": "#1f77b4",
}

#: Human names of the variants, as the paper's Table II writes them.
VARIANT_LABELS: dict[str, str] = {
    "emo_only": "EMO-only",
    "orth": "orth",
    "hcld_wo_supcon": "wo.SupCon",
    "hcld_wo_lcl": "wo.LCL",
    "hcld": "HCLD",
}


def variant_label(name: str) -> str:
    """The paper's name of a variant (``"hcld_wo_lcl"`` -> ``"wo.LCL"``), else the name itself."""
    return VARIANT_LABELS.get(name, name)


def provenance(
    profile: str | None = None,
    corpus: str | None = None,
    backbone: str | None = None,
    protocol: str | None = None,
    **extra: Any,
) -> str:
    """One line naming what made a figure or table, e.g.
    ``"profile=quick | corpus=synthetic | backbone=fbank | protocol=paper | folds=2"``."""
    parts = {"profile": profile, "corpus": corpus, "backbone": backbone, "protocol": protocol}
    parts.update(extra)
    return " | ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


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


def _emotion_order(values: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(str(v) for v in values))
    ordered = [e for e in EMOTIONS if e in present]
    return ordered + sorted(e for e in present if e not in EMOTIONS)


def _color_map(values: Sequence[str], kind: str) -> dict[str, Any]:
    """Stable colours: fixed for the four emotions, tab10/tab20 for speakers and others."""
    ordered = _emotion_order(values) if kind == "emotion" else sorted(set(map(str, values)))
    cmap = plt.get_cmap("tab10" if len(ordered) <= 10 else "tab20")
    colors = {}
    for i, v in enumerate(ordered):
        colors[v] = EMOTION_COLORS.get(v) if kind == "emotion" and v in EMOTION_COLORS else None
        if colors[v] is None:
            colors[v] = cmap(i % cmap.N)
    return colors


# --- data -----------------------------------------------------------------------------------


def _log_mel(wave: np.ndarray, sample_rate: int, n_mels: int = 80) -> np.ndarray:
    """Log-mel spectrogram [n_mels, frames] in dB (25 ms window, 10 ms hop)."""
    import torch
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate,
        n_fft=int(0.025 * sample_rate),
        hop_length=int(0.010 * sample_rate),
        n_mels=n_mels,
    )(torch.as_tensor(wave, dtype=torch.float32))
    return (10.0 * torch.log10(mel + 1e-10)).numpy()


def default_speaker(table: pd.DataFrame) -> str:
    """The first speaker (sorted) among those with the most distinct emotions."""
    if table.empty:
        raise HcldError("the utterance table is empty")
    n_emo = table.groupby(table["speaker"].astype(str))["emotion"].nunique()
    return str(n_emo[n_emo == n_emo.max()].sort_index().index[0])


def pick_utterances_per_emotion(
    table: pd.DataFrame, speaker: str | None = None, seed: int = 0
) -> dict[str, pd.Series]:
    """One utterance (a table row) per emotion of ``speaker`` (default :func:`default_speaker`),
    drawn with ``seed``; emotions in :data:`hcld_lib.config.EMOTIONS` order."""
    if speaker is None:
        speaker = default_speaker(table)
    rows = table[table["speaker"].astype(str) == str(speaker)]
    if rows.empty:
        raise HcldError(
            f"speaker {speaker!r} is not in the table; choose one of "
            f"{sorted(table['speaker'].astype(str).unique())}"
        )
    rng = np.random.default_rng(seed)
    picks = {}
    for emo in _emotion_order(rows["emotion"].tolist()):
        cand = rows[rows["emotion"] == emo].sort_values("utterance_id")
        picks[emo] = cand.iloc[int(rng.integers(len(cand)))]
    return picks


def plot_spectrograms_per_emotion(
    table: pd.DataFrame,
    speaker: str | None = None,
    caption: str | None = None,
    seed: int = 0,
    max_seconds: float | None = 4.0,
) -> Figure:
    """Log-mel spectrograms of one utterance per emotion of one speaker (the listening check).

    Args:
        table: utterance table (``path``, ``speaker``, ``emotion``, ``utterance_id``).
        speaker: whose utterances; ``None`` = the first speaker (sorted) having the most emotions.
        caption: provenance line.
        seed: picks which utterance of each emotion.
        max_seconds: crop each utterance to this length for display (``None`` = whole).
    """
    from hcld_lib.audio import load_audio

    if speaker is None:
        speaker = default_speaker(table)
    picks = pick_utterances_per_emotion(table, speaker, seed)
    emotions = list(picks)
    n = len(emotions)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.6 * n + 0.8, 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * n + [0.05]})
    image = None
    for ax, emo in zip(axes[0, :n], emotions):
        row = picks[emo]
        wave, valid = load_audio(row["path"], sample_rate=16000, max_seconds=None)
        wave = wave[:valid]
        if max_seconds is not None:
            wave = wave[: int(max_seconds * 16000)]
        spec = _log_mel(wave, 16000)
        top = spec.max()
        image = ax.imshow(
            spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
            extent=(0, len(wave) / 16000, 0, spec.shape[0]),
        )
        ax.set_title(f"{emo}  ({row['utterance_id']})", fontsize=9, color=EMOTION_COLORS.get(emo))
        ax.set_xlabel("time (s)")
        ax.set_ylabel("mel band")
    if image is not None:
        fig.colorbar(image, cax=axes[0, n], label="power (dB)")
    return finish_figure(fig, f"Log-mel spectrogram, one utterance per emotion, speaker {speaker}",
                   caption)


def _durations(table: pd.DataFrame) -> np.ndarray:
    if "duration" in table.columns and table["duration"].notna().all():
        return table["duration"].to_numpy(dtype=float)
    import soundfile as sf

    return np.array([sf.info(p).duration for p in table["path"]], dtype=float)


def plot_corpus_overview(table: pd.DataFrame, caption: str | None = None) -> Figure:
    """Counts per emotion, per speaker (stacked by emotion) and per session, the speaker x
    emotion heatmap, and the histogram of durations (read from the WAV headers when the table
    has no ``duration`` column)."""
    if table.empty:
        raise HcldError("the utterance table is empty; nothing to plot")
    emotions = _emotion_order(table["emotion"].tolist())
    colors = _color_map(emotions, "emotion")
    counts = pd.crosstab(table["speaker"].astype(str), table["emotion"]).reindex(
        columns=emotions, fill_value=0
    )
    fig = plt.figure(figsize=(14, 8))
    grid = fig.add_gridspec(2, 3)

    ax = fig.add_subplot(grid[0, 0])
    per_emo = table["emotion"].value_counts().reindex(emotions, fill_value=0)
    bars = ax.bar(per_emo.index, per_emo.values, color=[colors[e] for e in per_emo.index])
    ax.bar_label(bars, fontsize=8)
    ax.set(title="Utterances per emotion", xlabel="emotion", ylabel="utterances")

    ax = fig.add_subplot(grid[0, 1])
    bottom = np.zeros(len(counts))
    for emo in emotions:
        ax.bar(counts.index, counts[emo].values, bottom=bottom, color=colors[emo], label=emo)
        bottom += counts[emo].values
    ax.set(title="Utterances per speaker", xlabel="speaker", ylabel="utterances")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    ax.legend(title="emotion", fontsize=7, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))

    ax = fig.add_subplot(grid[0, 2])
    sessions = table["session"].astype(str) if "session" in table else pd.Series(["?"] * len(table))
    per_sess = sessions.value_counts().sort_index()
    bars = ax.bar(per_sess.index, per_sess.values, color="#8c564b")
    ax.bar_label(bars, fontsize=8)
    ax.set(title="Utterances per session", xlabel="session", ylabel="utterances")
    ax.tick_params(axis="x", rotation=30, labelsize=8)

    ax = fig.add_subplot(grid[1, 0:2])
    mat = counts.T.to_numpy()
    image = ax.imshow(mat, aspect="auto", cmap="viridis")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v < mat.max() * 0.6 else "black")
    ax.set_xticks(range(len(counts.index)), counts.index, rotation=60, fontsize=7)
    ax.set_yticks(range(len(emotions)), emotions)
    ax.set(title="Speaker x emotion (utterances)", xlabel="speaker", ylabel="emotion")
    fig.colorbar(image, ax=ax, label="utterances")

    ax = fig.add_subplot(grid[1, 2])
    dur = _durations(table)
    ax.hist(dur, bins=30, color="#17becf", edgecolor="white")
    ax.axvline(7.5, color="k", ls="--", lw=1, label="7.5 s crop")
    ax.set(title=f"Durations (median {np.median(dur):.1f} s)", xlabel="seconds",
           ylabel="utterances")
    ax.legend(fontsize=8)
    n_spk = table["speaker"].nunique()
    return finish_figure(fig, f"Corpus: {len(table)} utterances, {n_spk} speakers", caption)


# --- training -------------------------------------------------------------------------------

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
    skip = re.compile(r"(^epoch$|^lr$|learning_rate|seconds|time|^step$|_acc|_wa$|_ua$|_f1$)")
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
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if selected_epoch is not None:
        for ax in axes:
            ax.axvline(selected_epoch, color="k", ls=":", lw=1)
        axes[1].annotate("selected (val)", (selected_epoch, 0.02),
                         xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right")
    return finish_figure(fig, title or "Training curves", caption)


# --- embedding spaces -----------------------------------------------------------------------


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
    from hcld_lib.decoupling import load_embeddings, umap_embed

    if not runs:
        raise HcldError("no runs to plot; pass {variant: embeddings}")
    data = {name: load_embeddings(src) for name, src in runs.items()}
    all_emo = np.concatenate([d["emotion"].astype(str) for d in data.values()])
    all_spk = np.concatenate([d["speaker"].astype(str) for d in data.values()])
    emo_colors = _color_map(list(all_emo), "emotion")
    spk_colors = _color_map(list(all_spk), "speaker")
    fig, axes = plt.subplots(len(data), 4, figsize=(15, 3.5 * len(data)), squeeze=False)
    for r, (name, d) in enumerate(data.items()):
        emotion, speaker = d["emotion"].astype(str), d["speaker"].astype(str)
        for c0, space in ((0, "x_e"), (2, "x_s")):
            sym = "X_e" if space == "x_e" else "X_s"
            if space not in d:
                for c in (c0, c0 + 1):
                    axes[r, c].text(0.5, 0.5, f"{variant_label(name)}:\nno speaker branch",
                                    ha="center", va="center", transform=axes[r, c].transAxes)
                    axes[r, c].set_axis_off()
                continue
            xy = umap_embed(d[space], seed=seed, n_neighbors=n_neighbors)
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
    """The decoupling scorecard (rows of :func:`hcld_lib.decoupling.scorecard_table`).

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


def plot_grid_comparison(
    side_by_side: pd.DataFrame, caption: str | None = None, metric: str = "emo_ua"
) -> Figure:
    """Our mean ± std over folds beside the paper's number, per variant and architecture.

    Args:
        side_by_side: long table of :func:`hcld_lib.grid.side_by_side` (columns ``variant``,
            ``arch``, ``<metric>_mean``, ``<metric>_std``, ``paper_<metric>``).
        metric: ``emo_wa``, ``emo_ua``, ``spk_wa`` or ``spk_ua``.
    """
    need = {"variant", "arch", f"{metric}_mean"}
    if not need <= set(side_by_side.columns):
        raise HcldError(f"side_by_side lacks {sorted(need - set(side_by_side.columns))}")
    archs = list(dict.fromkeys(side_by_side["arch"]))
    variants = list(dict.fromkeys(side_by_side["variant"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.2), squeeze=False,
                             sharey=True)
    x = np.arange(len(variants))
    for ax, arch in zip(axes[0], archs):
        sub = side_by_side[side_by_side["arch"] == arch].set_index("variant").reindex(variants)
        ours = sub[f"{metric}_mean"].to_numpy(dtype=float)
        err = sub.get(f"{metric}_std", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=float)
        ax.bar(x - 0.2, np.nan_to_num(ours), 0.4, yerr=np.nan_to_num(err), capsize=3,
               color="#1f77b4", label="ours (mean ± std over folds)")
        paper_col = f"paper_{metric}"
        if paper_col in sub:
            ax.bar(x + 0.2, np.nan_to_num(sub[paper_col].to_numpy(dtype=float)), 0.4,
                   color="#bbbbbb", label="paper (IEMOCAP, HuBERT)")
        ax.set_xticks(x, [variant_label(v) for v in variants], rotation=30, fontsize=8)
        ax.set(title=arch, xlabel="variant")
        task, _, name = metric.partition("_")
        ax.set_ylabel(f"{'emotion' if task == 'emo' else 'speaker'} {name.upper()} (%)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    return finish_figure(fig, "Ours beside the paper's Table II", caption)


def plot_feature_examples(cache: Any, caption: str | None = None, seed: int = 0) -> Figure:
    """The cached features of one utterance per emotion (valid frames only, ``[T, D]`` shown as
    feature dimension x frame), each min-max scaled for display."""
    table = cache.table
    emotions = _emotion_order(table["emotion"].tolist())
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(emotions), figsize=(3.6 * len(emotions), 3.4), squeeze=False)
    frame_rate = float(cache.meta.get("frame_rate_hz", 50.0))
    for ax, emo in zip(axes[0], emotions):
        ids = table.loc[table["emotion"] == emo, "utterance_id"].tolist()
        utt = ids[int(rng.integers(len(ids)))]
        feats = cache[utt][: int(cache.lengths[cache.row(utt)])]
        if feats.ndim == 3:  # [L, T, D] when every layer was kept: show the last
            feats = feats[-1]
        ax.imshow(feats.T, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, len(feats) / frame_rate, 0, feats.shape[1]))
        ax.set_title(f"{emo}  ({utt})", fontsize=9, color=EMOTION_COLORS.get(emo))
        ax.set(xlabel="time (s)", ylabel="feature dimension")
    backbone = cache.meta.get("backbone", "?")
    return finish_figure(fig, f"Cached {backbone} features, one utterance per emotion", caption)


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
