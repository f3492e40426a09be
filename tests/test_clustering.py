"""Clustering metrics on hand-made clusterings; the intra-speaker analysis on planted clusters."""

from __future__ import annotations

import numpy as np
import pytest

from hcld_lib.analysis.clustering import (
    cluster_agreement,
    cluster_pseudo_labels,
    contingency_tables,
    intra_speaker_clustering,
    purity,
)
from hcld_lib.io import HcldError

EMOS = ["neu", "hap", "ang", "sad"]


def test_perfect_clustering_scores_one():
    truth = np.array(["a", "a", "b", "b", "c", "c"])
    m = cluster_agreement(truth, np.array([0, 0, 1, 1, 2, 2]))
    assert m == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_permuted_cluster_names_are_still_perfect():
    truth = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([7, 7, 3, 3, 5, 5, 1, 1])  # a relabelling of the same partition
    m = cluster_agreement(truth, pred)
    assert m == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_purity_by_hand():
    # cluster 0 = {a, a, b} -> majority 2; cluster 1 = {b, b, c, a} -> 2; cluster 2 = {c} -> 1
    truth = np.array(["a", "a", "b", "b", "b", "c", "a", "c"])
    pred = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    assert purity(truth, pred) == pytest.approx(5 / 8)
    # one cluster for everything: the share of the largest class
    assert purity(truth, np.zeros(8, dtype=int)) == pytest.approx(3 / 8)


def test_independent_clustering_scores_low():
    truth = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 0, 1])  # each cluster holds one of each class
    m = cluster_agreement(truth, pred)
    assert m["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert m["ari"] < 0
    assert m["purity"] == pytest.approx(0.5)


def test_purity_rejects_mismatched_lengths():
    with pytest.raises(HcldError, match="equal length"):
        purity(np.array([0, 1]), np.array([0, 1, 2]))


def _planted(emotion_scale: float, n_per: int = 12, seed: int = 0):
    """Speakers far apart; within a speaker, one offset per emotion (scaled)."""
    rng = np.random.default_rng(seed)
    speakers = [f"s{i}" for i in range(4)]
    spk, emo, rows = [], [], []
    emo_dirs = {e: rng.normal(size=32) for e in EMOS}
    for s in speakers:
        centre = rng.normal(size=32) * 5
        for e in EMOS:
            for _ in range(n_per):
                spk.append(s)
                emo.append(e)
                rows.append(centre + emotion_scale * emo_dirs[e] + 0.2 * rng.normal(size=32))
    return np.stack(rows), np.array(spk), np.array(emo)


def test_intra_speaker_clusters_found_and_floor_is_low():
    x, spk, emo = _planted(emotion_scale=2.0)
    res = intra_speaker_clustering(x, spk, emo, seed=0, n_shuffles=3, normalize=False)
    assert res.k == 4
    assert len(res.per_speaker) == 4
    nmi, nmi_std = res.metric("intra_speaker", "nmi")
    assert nmi == pytest.approx(1.0)
    assert nmi_std == pytest.approx(0.0, abs=1e-9)
    floor, _ = res.metric("shuffled", "nmi")
    assert 0.0 < floor < 0.3
    # the global clustering follows the far-apart speakers, not the emotions
    glob, _ = res.metric("global", "nmi")
    assert glob < 0.2
    within, _ = res.metric("global_within_speaker", "ari")
    assert within == pytest.approx(0.0, abs=1e-9)
    assert set(res.summary["condition"]) == {
        "intra_speaker", "shuffled", "global_within_speaker", "global"
    }


def test_no_emotion_in_space_matches_floor():
    x, spk, emo = _planted(emotion_scale=0.0)
    res = intra_speaker_clustering(x, spk, emo, seed=0, n_shuffles=5)
    nmi, _ = res.metric("intra_speaker", "nmi")
    floor, _ = res.metric("shuffled", "nmi")
    assert nmi < 0.3
    assert abs(nmi - floor) < 0.15


def test_contingency_tables_are_aligned_counts():
    x, spk, emo = _planted(emotion_scale=2.0, n_per=5)
    res = intra_speaker_clustering(x, spk, emo, seed=0, n_shuffles=1, normalize=False)
    tables = contingency_tables(res.clusters, spk, emo, emotions=EMOS)
    assert sorted(tables) == ["s0", "s1", "s2", "s3"]
    t = tables["s0"]
    assert list(t.columns) == EMOS
    assert t.to_numpy().sum() == 20
    np.testing.assert_array_equal(t.to_numpy(), 5 * np.eye(4, dtype=int))


def test_pseudo_labels_unique_per_speaker_and_cluster():
    x, spk, emo = _planted(emotion_scale=2.0, n_per=6)
    labels = cluster_pseudo_labels(x, spk, k=4, seed=0)
    assert labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 15  # 4 speakers x 4 clusters, dense
    # a label never spans two speakers
    for lab in np.unique(labels):
        assert len(set(spk[labels == lab])) == 1
    # and within a speaker it recovers the planted emotion groups
    for s in np.unique(spk):
        rows = spk == s
        assert cluster_agreement(emo[rows], labels[rows])["ari"] == pytest.approx(1.0)


def test_speaker_with_fewer_utterances_than_k():
    x = np.random.default_rng(0).normal(size=(5, 4))
    spk = np.array(["a", "a", "a", "b", "b"])
    emo = np.array(["neu", "hap", "ang", "sad", "neu"])
    res = intra_speaker_clustering(x, spk, emo, k=4, n_shuffles=2)
    assert res.per_speaker.set_index("speaker").loc["b", "k"] == 2


def test_bad_inputs_are_clear_errors():
    with pytest.raises(HcldError, match="one label per embedding row"):
        intra_speaker_clustering(np.zeros((4, 2)), np.array(["a"] * 3), np.array(["x"] * 4))
    with pytest.raises(HcldError, match="2-d"):
        intra_speaker_clustering(np.zeros(4), np.array(["a"] * 4), np.array(["x"] * 4))
