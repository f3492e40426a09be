"""Emotion inside speaker embeddings: intra-speaker clustering and its agreement with emotions.

Ulgen, Du, Busso and Sisman (ICASSP 2024): cluster *one speaker's* utterances in a speaker
embedding space and the clusters line up with emotions. This module measures that claim.

For every speaker s with utterances U_s:

1. k-means with k clusters (default k = number of emotions) on the (L2-normalised) embeddings of
   U_s (sklearn ``KMeans``, seeded, ``n_init=10``);
2. agreement of the clusters C with the emotions E of U_s by

   - NMI(E, C) = I(E; C) / mean(H(E), H(C))                   (arithmetic normalisation, sklearn)
   - ARI(E, C)                                                 (Hubert & Arabie, sklearn)
   - purity(E, C) = (1 / |U_s|) * sum_c max_e |{u in c : e_u = e}|   (:func:`purity`)

3. averaged over speakers, with their spread (std over speakers).

Two references say how much of that agreement is meaningful:

- **shuffled floor** (``condition="shuffled"``): the same clusters scored against the speaker's
  emotion labels permuted within the speaker (``n_shuffles`` seeds, averaged). NMI and purity are
  positive for random labellings of small sets, so the floor is what "no emotion" looks like;
- **global clustering** (``condition="global"``): one k-means with k = number of emotions on all
  utterances, ignoring the speaker. Scored on all utterances pooled (``"global"``) and, to compare
  like with like, within each speaker (``"global_within_speaker"``). In a good speaker space the
  global clusters follow speakers, not emotions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hcld_lib.analysis.stats import t_interval, verdict, verdict_sentence
from hcld_lib.io import HcldError
from hcld_lib.method.variants import variant_label

METRICS: tuple[str, ...] = ("nmi", "ari", "purity")
CONDITIONS: tuple[str, ...] = ("intra_speaker", "shuffled", "global_within_speaker", "global")


# --------------------------------------------------------------------------------------------
# metrics (pure functions)
# --------------------------------------------------------------------------------------------
def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Cluster purity: the share of items that carry their cluster's majority label.

    purity = (1 / N) * sum_c max_e |{i : pred_i = c and true_i = e}|. It is 1 for a perfect
    clustering (whatever the cluster names), and rises with the number of clusters (N singleton
    clusters have purity 1), which is why it is read against the shuffled floor.

    Args:
        labels_true: [N] reference labels (any hashable dtype).
        labels_pred: [N] cluster assignments (any hashable dtype).
    """
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
        raise HcldError(
            f"purity needs two 1-d label arrays of equal length, got shapes "
            f"{labels_true.shape} and {labels_pred.shape}"
        )
    if labels_true.size == 0:
        raise HcldError("purity of an empty labelling is undefined; pass at least one item")
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    return float(counts.max(axis=1).sum() / labels_true.size)


def cluster_agreement(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """NMI, ARI and purity of a clustering ``labels_pred`` [N] against ``labels_true`` [N]."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    return {
        "nmi": float(normalized_mutual_info_score(labels_true, labels_pred)),
        "ari": float(adjusted_rand_score(labels_true, labels_pred)),
        "purity": purity(labels_true, labels_pred),
    }


# --------------------------------------------------------------------------------------------
# clustering
# --------------------------------------------------------------------------------------------
def _check_inputs(x: np.ndarray, *label_arrays: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise HcldError(f"embeddings must be a 2-d array [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise HcldError(
            "embeddings contain NaN or inf; check the encoder or the cache they came from"
        )
    for a in label_arrays:
        if len(a) != len(x):
            raise HcldError(
                f"labels have {len(a)} entries but the embeddings have {len(x)} rows; "
                "pass one label per embedding row"
            )
    return x


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """k-means cluster ids [N] (int64 in 0..k'-1, k' = min(k, N)) of the rows of ``x`` [N, D]."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    k_eff = int(min(k, len(x)))
    if k_eff <= 1:
        return np.zeros(len(x), dtype=np.int64)
    # k-means on fewer distinct points than k leaves empty clusters and a warning; cap it.
    n_distinct = len(np.unique(np.round(x, 12), axis=0))
    k_eff = min(k_eff, n_distinct)
    if k_eff <= 1:
        return np.zeros(len(x), dtype=np.int64)
    km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


def intra_speaker_kmeans(
    x: np.ndarray,
    speaker: np.ndarray,
    k: int,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """Cluster each speaker's utterances separately.

    Args:
        x: [N, D] embeddings.
        speaker: [N] speaker labels.
        k: clusters per speaker (fewer when a speaker has fewer than k utterances).
        seed: k-means seed (the same for every speaker).
        normalize: L2-normalise the rows first (speaker embeddings are compared by cosine).

    Returns:
        [N] int64 cluster ids *within* the speaker (0..k-1); combine with the speaker for a
        global id (:func:`cluster_pseudo_labels`).
    """
    speaker = np.asarray(speaker)
    x = _check_inputs(x, speaker)
    if k < 1:
        raise HcldError(f"k={k} must be >= 1")
    if normalize:
        x = _l2_normalise(x)
    clusters = np.zeros(len(x), dtype=np.int64)
    for s in np.unique(speaker):
        rows = np.flatnonzero(speaker == s)
        clusters[rows] = kmeans_labels(x[rows], k, seed=seed)
    return clusters


def cluster_pseudo_labels(
    x: np.ndarray, speaker: np.ndarray, k: int, seed: int = 0, normalize: bool = True
) -> np.ndarray:
    """Pseudo-labels for cluster pretraining: one integer per (speaker, intra-speaker cluster).

    Args:
        x: [N, D] speaker embeddings.
        speaker: [N] speaker labels.
        k: clusters per speaker.

    Returns:
        [N] int64 labels in 0..L-1 (L <= n_speakers * k); two utterances share a label iff they
        have the same speaker and fall in the same cluster of that speaker.
    """
    speaker = np.asarray(speaker)
    clusters = intra_speaker_kmeans(x, speaker, k, seed=seed, normalize=normalize)
    _, spk_idx = np.unique(speaker, return_inverse=True)
    pairs = spk_idx.astype(np.int64) * (int(k) + 1) + clusters
    _, labels = np.unique(pairs, return_inverse=True)
    return labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
@dataclass
class ClusteringResult:
    """What :func:`intra_speaker_clustering` measured.

    Attributes:
        per_speaker: one row per speaker: ``speaker, n, n_emotions, k`` and, for each metric m in
            (nmi, ari, purity), ``m`` (intra-speaker clusters), ``m_shuffled`` (the floor, mean
            over shuffles) and ``m_global`` (the global clusters scored within the speaker).
        summary: one row per condition (:data:`CONDITIONS`) with ``m_mean`` and ``m_std``
            (std over speakers; NaN for the pooled ``global`` row) for every metric.
        clusters: [N] intra-speaker cluster ids (0..k-1 within each speaker).
        global_clusters: [N] global k-means cluster ids.
        k: clusters per speaker.
    """

    per_speaker: pd.DataFrame
    summary: pd.DataFrame
    clusters: np.ndarray
    global_clusters: np.ndarray
    k: int
    meta: dict = field(default_factory=dict)

    def metric(self, condition: str, metric: str = "nmi") -> tuple[float, float]:
        """``(mean, std)`` of ``metric`` under ``condition``."""
        row = self.summary.set_index("condition").loc[condition]
        return float(row[f"{metric}_mean"]), float(row[f"{metric}_std"])


def _shuffle_within(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = labels.copy()
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = labels[rng.permutation(rows)]
    return out


def intra_speaker_clustering(
    x: np.ndarray,
    speaker: np.ndarray,
    emotion: np.ndarray,
    k: int | None = None,
    seed: int = 0,
    n_shuffles: int = 5,
    normalize: bool = True,
) -> ClusteringResult:
    """Do the intra-speaker clusters of a speaker space line up with emotions?

    Args:
        x: [N, D] speaker embeddings (pretrained speaker encoder or a model's X_s).
        speaker: [N] speaker labels.
        emotion: [N] emotion labels (used only to score the clusters).
        k: clusters per speaker; ``None`` = the number of distinct emotions in ``emotion``.
        seed: seed of every k-means and of the shuffles.
        n_shuffles: how many within-speaker shufflings of the emotions make the floor.
        normalize: L2-normalise the embeddings before clustering.

    Returns:
        a :class:`ClusteringResult` (per-speaker rows and a summary by condition).
    """
    speaker = np.asarray(speaker).astype(str)
    emotion = np.asarray(emotion).astype(str)
    x = _check_inputs(x, speaker, emotion)
    n_emotions = len(np.unique(emotion))
    k = n_emotions if k is None else int(k)
    if k < 1:
        raise HcldError(f"k={k} must be >= 1 (or None for the number of emotions)")
    if n_shuffles < 1:
        raise HcldError(f"n_shuffles={n_shuffles} must be >= 1")
    xn = _l2_normalise(x) if normalize else x

    clusters = intra_speaker_kmeans(xn, speaker, k, seed=seed, normalize=False)
    global_clusters = kmeans_labels(xn, n_emotions, seed=seed)
    rng = np.random.default_rng(seed)
    shuffled = [_shuffle_within(emotion, speaker, rng) for _ in range(n_shuffles)]

    per_speaker = _per_speaker_scores(speaker, emotion, clusters, global_clusters, shuffled)
    return ClusteringResult(
        per_speaker=per_speaker,
        summary=_summary_by_condition(per_speaker, emotion, global_clusters, k),
        clusters=clusters,
        global_clusters=global_clusters,
        k=k,
        meta={"n": len(x), "n_emotions": n_emotions, "seed": seed, "n_shuffles": n_shuffles,
              "normalize": normalize},
    )


def _per_speaker_scores(speaker: np.ndarray, emotion: np.ndarray, clusters: np.ndarray,
                        global_clusters: np.ndarray, shuffled: list[np.ndarray]) -> pd.DataFrame:
    """:attr:`ClusteringResult.per_speaker`: each speaker's intra-speaker clusters scored against
    its emotions, against each shuffled labelling (mean), and its global clusters' score.
    """
    rows = []
    for s in np.unique(speaker):
        idx = np.flatnonzero(speaker == s)
        row: dict = {
            "speaker": s,
            "n": len(idx),
            "n_emotions": len(np.unique(emotion[idx])),
            "k": len(np.unique(clusters[idx])),
        }
        row.update(cluster_agreement(emotion[idx], clusters[idx]))
        floor = [cluster_agreement(sh[idx], clusters[idx]) for sh in shuffled]
        for m in METRICS:
            row[f"{m}_shuffled"] = float(np.mean([f[m] for f in floor]))
        glob = cluster_agreement(emotion[idx], global_clusters[idx])
        for m in METRICS:
            row[f"{m}_global"] = glob[m]
        rows.append(row)
    return pd.DataFrame(rows)


def _summary_by_condition(per_speaker: pd.DataFrame, emotion: np.ndarray,
                          global_clusters: np.ndarray, k: int) -> pd.DataFrame:
    """:attr:`ClusteringResult.summary`: mean and std over speakers per condition, plus the
    global clusters scored on all utterances pooled (std NaN).
    """
    summary_rows = []
    for condition, suffix in (
        ("intra_speaker", ""),
        ("shuffled", "_shuffled"),
        ("global_within_speaker", "_global"),
    ):
        r: dict = {"condition": condition}
        for m in METRICS:
            vals = per_speaker[f"{m}{suffix}"].to_numpy(dtype=float)
            r[f"{m}_mean"] = float(np.mean(vals))
            r[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        summary_rows.append(r)
    pooled = cluster_agreement(emotion, global_clusters)
    summary_rows.append(
        {"condition": "global", **{f"{m}_mean": pooled[m] for m in METRICS},
         **{f"{m}_std": float("nan") for m in METRICS}}
    )
    summary = pd.DataFrame(summary_rows)
    summary.insert(1, "n_speakers", len(per_speaker))
    summary.insert(2, "k", k)
    return summary


def contingency_tables(
    clusters: np.ndarray,
    speaker: np.ndarray,
    emotion: np.ndarray,
    emotions: list[str] | tuple[str, ...] | None = None,
    speakers: list[str] | None = None,
    align: bool = True,
) -> dict[str, pd.DataFrame]:
    """Per-speaker cluster x emotion count tables (the figure of the clustering analysis).

    Args:
        clusters: [N] intra-speaker cluster ids (e.g. ``ClusteringResult.clusters``).
        speaker: [N] speaker labels.
        emotion: [N] emotion labels.
        emotions: column order (default: sorted distinct emotions).
        speakers: which speakers, in which order (default: all, sorted).
        align: order each speaker's clusters so that cluster i is matched to emotion i as well as
            possible (Hungarian assignment on the counts); a clustering that follows emotions
            then shows as a heavy diagonal.

    Returns:
        ``{speaker: DataFrame}`` with rows ``c0, c1, ...`` (clusters) and columns = emotions.
    """
    clusters = np.asarray(clusters)
    speaker = np.asarray(speaker).astype(str)
    emotion = np.asarray(emotion).astype(str)
    if not (len(clusters) == len(speaker) == len(emotion)):
        raise HcldError(
            f"clusters ({len(clusters)}), speaker ({len(speaker)}) and emotion ({len(emotion)}) "
            "must have one entry per utterance"
        )
    emotions = list(emotions) if emotions is not None else sorted(np.unique(emotion))
    speakers = list(speakers) if speakers is not None else sorted(np.unique(speaker))
    out: dict[str, pd.DataFrame] = {}
    for s in speakers:
        idx = np.flatnonzero(speaker == s)
        if len(idx) == 0:
            raise HcldError(f"speaker {s!r} has no utterances; choose from {sorted(set(speaker))}")
        ids = np.unique(clusters[idx])
        counts = np.zeros((len(ids), len(emotions)), dtype=np.int64)
        for r, c in enumerate(ids):
            in_c = emotion[idx][clusters[idx] == c]
            for j, e in enumerate(emotions):
                counts[r, j] = int(np.sum(in_c == e))
        order = np.arange(len(ids))
        if align and len(ids) > 0:
            row_ind, col_ind = linear_sum_assignment(-counts)
            matched = list(row_ind[np.argsort(col_ind)])
            rest = [r for r in range(len(ids)) if r not in set(matched)]
            rest.sort(key=lambda r: int(np.argmax(counts[r])))
            order = np.array(matched + rest, dtype=np.int64)
        counts = counts[order]
        out[s] = pd.DataFrame(counts, index=[f"c{i}" for i in range(len(ids))], columns=emotions)
    return out


def compare_speaker_spaces(
    sources: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    k: int | None = None,
    seed: int = 0,
    n_shuffles: int = 5,
    normalize: bool = True,
) -> tuple[pd.DataFrame, dict[str, list[ClusteringResult]]]:
    """Run :func:`intra_speaker_clustering` on several speaker spaces and tabulate them.

    Args:
        sources: ``{name: [(x [N, D], speaker [N], emotion [N]), ...]}``, one tuple per evaluation
            set (e.g. one per fold's test part), so that every space is scored on the same
            utterances.
        k, seed, n_shuffles, normalize: as in :func:`intra_speaker_clustering`.

    Returns:
        ``(table, results)``: ``table`` has one row per source with ``n_sets`` and
        ``n_speaker_sets`` (speaker x set rows averaged), and for each metric m
        ``m_mean, m_std`` (intra-speaker), ``m_shuffled_mean, m_shuffled_std`` (the floor),
        ``m_global_within_mean, m_global_within_std`` (global clusters scored within speakers)
        and ``m_global_pooled`` (global clusters on the whole set, mean over sets). Means and
        stds are over the speaker x set rows. ``results`` keeps every :class:`ClusteringResult`.
    """
    if not sources:
        raise HcldError("compare_speaker_spaces needs at least one source of embeddings")
    rows, results = [], {}
    for name, sets in sources.items():
        if not sets:
            raise HcldError(f"source {name!r} has no embedding sets")
        res = [
            intra_speaker_clustering(x, s, e, k=k, seed=seed, n_shuffles=n_shuffles,
                                     normalize=normalize)
            for x, s, e in sets
        ]
        results[name] = res
        per = pd.concat([r.per_speaker for r in res], ignore_index=True)
        row: dict = {"source": name, "n_sets": len(res), "n_speaker_sets": len(per),
                     "k": res[0].k}
        for m in METRICS:
            for suffix, label in (("", ""), ("_shuffled", "_shuffled"),
                                  ("_global", "_global_within")):
                vals = per[f"{m}{suffix}"].to_numpy(dtype=float)
                row[f"{m}{label}_mean"] = float(np.mean(vals))
                row[f"{m}{label}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            row[f"{m}_global_pooled"] = float(np.mean([r.metric("global", m)[0] for r in res]))
        rows.append(row)
    return pd.DataFrame(rows), results


def source_label(name: str) -> str:
    """``"X_s:hcld"`` -> ``"X_s HCLD"``; a pretrained encoder's name is kept."""
    if name.startswith("X_s:"):
        return f"X_s {variant_label(name[4:])}"
    return name


def speaker_space_sentences(
    table: pd.DataFrame, sources: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    results: dict[str, list[ClusteringResult]],
) -> list[str]:
    """What :func:`compare_speaker_spaces` found, in sentences: how far each space's
    intra-speaker NMI sits above its shuffled floor; whether HCLD's X_s holds less emotion than
    orth's (the one verdict rule, :mod:`hcld_lib.analysis.stats`: NMI differences paired by
    (fold, speaker), 95 % t-interval, judged against HCLD's aim, a negative difference); and
    which variants trained identical speaker branches. ``sources`` and ``results`` as given to
    and returned by :func:`compare_speaker_spaces`.
    """
    lines = []
    for _, r in table.iterrows():
        gap = r["nmi_mean"] - r["nmi_shuffled_mean"]
        lines.append(f"**{source_label(r['source'])}**: NMI {r['nmi_mean']:.3f} ± "
                     f"{r['nmi_std']:.3f} vs floor {r['nmi_shuffled_mean']:.3f} (+{gap:.3f}); "
                     f"ARI {r['ari_mean']:.3f}; purity {r['purity_mean']:.3f} vs "
                     f"{r['purity_shuffled_mean']:.3f}.")
    if {"X_s:hcld", "X_s:orth"} <= set(results):
        diffs = []
        for h, o in zip(results["X_s:hcld"], results["X_s:orth"], strict=True):
            both = h.per_speaker.set_index("speaker")["nmi"].to_frame("h").join(
                o.per_speaker.set_index("speaker")["nmi"].to_frame("o"), how="inner")
            diffs += list(both["h"] - both["o"])
        ci = t_interval(diffs)
        result = {**ci, "verdict": verdict(ci["ci_low"], ci["ci_high"], -1.0, ci["n_pairs"])}
        lines.append(verdict_sentence("HCLD's X_s vs orth's X_s, intra-speaker NMI", result,
                                      unit="NMI", by=("fold", "speaker"), digits=3)
                     + " (held = HCLD's speaker space holds less emotion, as it intends)")
    same: dict[tuple, list[str]] = {}
    for name, sets in sources.items():
        if name.startswith("X_s:"):
            key = tuple(hash(x.tobytes()) for x, _, _ in sets)
            same.setdefault(key, []).append(source_label(name))
    for names in same.values():
        if len(names) > 1:
            lines.append(f"{', '.join(names)}: **identical** X_s (the speaker branch of these "
                         "variants is trained by the same loss terms, with the same seed, "
                         "batches and selected epoch).")
    return lines
