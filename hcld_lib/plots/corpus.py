"""Figures of the data: the corpus at a glance, spectrograms per emotion, cached features."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from matplotlib.figure import Figure

from hcld_lib.data.audio import load_audio
from hcld_lib.data.labels import emotion_order
from hcld_lib.io import HcldError
from hcld_lib.plots.style import EMOTION_COLORS, color_map, finish_figure


def _log_mel(wave: np.ndarray, sample_rate: int, n_mels: int = 80) -> np.ndarray:
    """Log-mel spectrogram [n_mels, frames] in dB (25 ms window, 10 ms hop)."""

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
    drawn with ``seed``; emotions in :data:`hcld_lib.data.labels.EMOTIONS` order."""
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
    for emo in emotion_order(rows["emotion"].tolist()):
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

    return np.array([sf.info(p).duration for p in table["path"]], dtype=float)


def plot_corpus_overview(table: pd.DataFrame, caption: str | None = None) -> Figure:
    """Counts per emotion, per speaker (stacked by emotion) and per session, the speaker x
    emotion heatmap, and the histogram of durations (read from the WAV headers when the table
    has no ``duration`` column)."""
    if table.empty:
        raise HcldError("the utterance table is empty; nothing to plot")
    emotions = emotion_order(table["emotion"].tolist())
    colors = color_map(emotions, "emotion")
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




def plot_feature_examples(cache: Any, caption: str | None = None, seed: int = 0) -> Figure:
    """The cached features of one utterance per emotion (valid frames only, ``[T, D]`` shown as
    feature dimension x frame), each min-max scaled for display."""
    table = cache.table
    emotions = emotion_order(table["emotion"].tolist())
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


