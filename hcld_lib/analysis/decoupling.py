"""How decoupled are the emotion and speaker spaces? (Beyond the paper.)

The paper reports accuracies only. Here the test embeddings of a run (``x_e`` [N, E], ``x_s``
[N, E] unless EMO-only, ``emotion`` [N], ``speaker`` [N]; read by
:mod:`hcld_lib.analysis.embeddings`) are measured:

* **linear probes** — a standardised logistic regression, cross-validated on the embeddings,
  predicting speaker from X_e and emotion from X_s (lower = more decoupled; read against chance),
  and the "wanted" directions emotion from X_e and speaker from X_s;
* **silhouettes** — the cosine silhouette coefficient of X_e and X_s grouped by emotion and by
  speaker (in [-1, 1]; near 0 = the labels do not form clusters in that space);
* **UMAP** views of both spaces (see :func:`umap_embed`; plotted by :mod:`hcld_lib.plots`).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib import runtime
from hcld_lib.analysis.embeddings import EmbeddingSource, load_run_embeddings
from hcld_lib.io import HcldError


def _as_2d(x: Any, name: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise HcldError(f"{name} must be a 2-D array [N, E]; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise HcldError(f"{name} contains NaN or infinite values; check the run that wrote it")
    return arr


def linear_probe_accuracy(
    x: np.ndarray, labels: np.ndarray, seed: int = 0, cv: int = 5
) -> dict[str, float]:
    """Cross-validated accuracy of a linear classifier predicting ``labels`` from ``x``.

    A pipeline (per-dimension standardisation + multinomial logistic regression) is scored by
    stratified ``cv``-fold cross-validation (shuffled with ``seed``); every sample is predicted
    once by a model that did not see it, and the pooled predictions give

    * ``accuracy`` = mean(pred == label) (WA), ``balanced_accuracy`` = mean per-class recall (UA),
    * ``chance`` = the majority-class rate (the accuracy of always guessing the largest class),
    * ``chance_balanced`` = 1 / n_classes (the balanced accuracy of any constant guess),
    * ``n``, ``n_classes``, ``cv`` (folds actually used) and ``dropped`` (samples whose class
      had a single member and so could not be both trained and tested on).

    Args:
        x: embeddings [N, E].
        labels: class of each row [N] (any hashable values).
        seed: seeds the fold shuffle and the solver.
        cv: requested folds; lowered to the smallest class count when a class is rarer.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _as_2d(x)
    labels = np.asarray(labels).astype(str)
    if labels.shape != (x.shape[0],):
        raise HcldError(f"labels has shape {labels.shape}; expected ({x.shape[0]},) to match x")
    classes, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, classes[counts >= 2])
    dropped = int((~keep).sum())
    x, labels = x[keep], labels[keep]
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise HcldError(
            f"a linear probe needs at least 2 classes with 2+ samples each; got {len(classes)} "
            f"(after dropping {dropped} singleton samples) — use a larger test part"
        )
    n_splits = int(min(cv, counts.min()))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny, separable folds
        pred = cross_val_predict(probe, x, labels, cv=folds)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "chance": float(counts.max() / counts.sum()),
        "chance_balanced": float(1.0 / len(classes)),
        "n": int(len(labels)),
        "n_classes": int(len(classes)),
        "cv": n_splits,
        "dropped": dropped,
    }


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(labels) - 1:
        return float("nan")  # undefined: one cluster, or every point its own cluster
    return float(silhouette_score(x, labels, metric="cosine"))


def silhouettes(x: np.ndarray, emotion: np.ndarray, speaker: np.ndarray) -> dict[str, float]:
    """Cosine silhouette coefficient of ``x`` [N, E] grouped by ``emotion`` and by ``speaker``.

    For sample i with mean cosine distance a(i) to its own group and b(i) to the nearest other
    group, s(i) = (b - a) / max(a, b); the score is the mean over i, in [-1, 1]. NaN when the
    grouping has fewer than 2 groups or as many groups as samples.

    Returns:
        ``{"emotion": float, "speaker": float}``.
    """
    x = _as_2d(x)
    emotion = np.asarray(emotion).astype(str)
    speaker = np.asarray(speaker).astype(str)
    if emotion.shape != (len(x),) or speaker.shape != (len(x),):
        raise HcldError(
            f"emotion {emotion.shape} and speaker {speaker.shape} must both have shape ({len(x)},)"
        )
    return {"emotion": _silhouette(x, emotion), "speaker": _silhouette(x, speaker)}


def decoupling_scorecard(
    embeddings: EmbeddingSource, seed: int = 0, cv: int = 5
) -> dict[str, float]:
    """Every decoupling measure of this module for one run's test embeddings, as one flat dict.

    Keys (``<target>_from_<space>`` probes give ``_acc`` = accuracy and ``_bacc`` = balanced
    accuracy):

    * ``speaker_from_x_e_*`` (leak of speaker into the emotion space: lower = more decoupled),
      ``emotion_from_x_e_*`` (what X_e is for);
    * ``emotion_from_x_s_*`` (leak of emotion into the speaker space: lower = more decoupled),
      ``speaker_from_x_s_*`` (what X_s is for) — only when the run has X_s (not EMO-only);
    * ``emotion_chance``, ``emotion_chance_balanced``, ``speaker_chance``,
      ``speaker_chance_balanced`` (see :func:`linear_probe_accuracy`);
    * ``sil_x_e_emotion``, ``sil_x_e_speaker`` and, with X_s, ``sil_x_s_emotion``,
      ``sil_x_s_speaker`` (cosine silhouettes);
    * ``n`` (test utterances) and ``has_x_s`` (1.0 / 0.0).

    Args:
        embeddings: path of ``embeddings.npz``, a run folder, or a dict with the same keys.
        seed, cv: passed to :func:`linear_probe_accuracy`.
    """
    run = load_run_embeddings(embeddings)
    emotion, speaker = run.emotion, run.speaker
    spaces = {"x_e": run.x_e}
    if run.x_s is not None:
        spaces["x_s"] = run.x_s
    card: dict[str, float] = {"n": float(len(emotion)), "has_x_s": float("x_s" in spaces)}
    for space, x in spaces.items():
        for target, labels in (("emotion", emotion), ("speaker", speaker)):
            probe = linear_probe_accuracy(x, labels, seed=seed, cv=cv)
            card[f"{target}_from_{space}_acc"] = probe["accuracy"]
            card[f"{target}_from_{space}_bacc"] = probe["balanced_accuracy"]
            card[f"{target}_chance"] = probe["chance"]
            card[f"{target}_chance_balanced"] = probe["chance_balanced"]
        sil = silhouettes(x, emotion, speaker)
        card[f"sil_{space}_emotion"] = sil["emotion"]
        card[f"sil_{space}_speaker"] = sil["speaker"]
    return card


def scorecard_table(
    runs: Mapping[str, EmbeddingSource], seed: int = 0, cv: int = 5
) -> pd.DataFrame:
    """:func:`decoupling_scorecard` of several runs, one row each, indexed by the mapping's keys.

    Columns of X_s measures are NaN for runs without a speaker branch (EMO-only).
    """
    rows = {name: decoupling_scorecard(src, seed=seed, cv=cv) for name, src in runs.items()}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "run"
    return df


#: umap-learn's numba kernels that it compiles on every first fit of a process (it does not ask
#: numba to cache them; about 12 s on one core): module, attribute.
_UMAP_KERNELS = (
    ("umap.utils", "fast_knn_indices"),
    ("umap.umap_", "smooth_knn_dist"),
    ("umap.umap_", "compute_membership_strengths"),
    ("umap.layouts", "_nb_optimize_layout_euclidean_single_epoch"),
)


def _cache_umap_kernels() -> None:
    """Ask numba to cache umap-learn's uncached kernels in ``NUMBA_CACHE_DIR`` (same machine
    code, same results; a later process loads them instead of compiling). A kernel that a
    umap-learn version does not have, or that is not a numba dispatcher, is left alone."""
    for module, name in _UMAP_KERNELS:
        kernel = getattr(sys.modules.get(module), name, None)
        if hasattr(kernel, "enable_caching"):
            kernel.enable_caching()


def umap_embed(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of ``x`` [N, E] with cosine distances, deterministic for a given ``seed``.

    ``n_neighbors`` is capped at N - 1 so small test parts work. Returns float32 [N, 2].
    Setting ``random_state`` makes umap-learn run single-threaded, which is what makes it repeat.
    """
    x = _as_2d(x)
    if len(x) < 4:
        raise HcldError(f"UMAP needs at least 4 points; got {len(x)}")
    runtime.numba_cache()  # umap-learn compiles with numba on import
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state; tiny-N spectral init
        import umap

        _cache_umap_kernels()
        reducer = umap.UMAP(
            n_neighbors=int(min(n_neighbors, len(x) - 1)),
            n_components=2,
            metric="cosine",
            random_state=seed,
            init="spectral" if len(x) > n_neighbors + 2 else "random",
        )
        out = reducer.fit_transform(x)
    return np.asarray(out, dtype=np.float32)
