"""The decoupling scorecard: probes read what is there and nothing that is not."""

from __future__ import annotations

import numpy as np
import pytest

from hcld_lib.analysis.decoupling import (
    decoupling_scorecard,
    linear_probe_accuracy,
    scorecard_table,
    silhouettes,
    umap_embed,
)
from hcld_lib.io import HcldError, atomic_save_npz


def _labels(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emotion = np.array(["neu", "hap", "ang", "sad"])[np.arange(n) % 4]
    speaker = np.array([f"spk{i}" for i in range(5)])[rng.permutation(np.arange(n) % 5)]
    return emotion, speaker


def _embeddings(n: int = 200, seed: int = 0, leak: float = 0.0, with_x_s: bool = True) -> dict:
    """X_e encodes emotion (+ ``leak`` x speaker), X_s encodes speaker only."""
    rng = np.random.default_rng(seed)
    emotion, speaker = _labels(n, seed)
    emo_code = np.eye(4)[np.searchsorted(["ang", "hap", "neu", "sad"], emotion)]
    spk_code = np.eye(5)[[int(s[3:]) for s in speaker]]
    x_e = np.hstack([4 * emo_code, leak * 4 * spk_code, np.zeros((n, 7))])
    x_e = x_e + rng.normal(size=x_e.shape)
    data = {"x_e": x_e.astype(np.float32), "emotion": emotion, "speaker": speaker}
    if with_x_s:
        x_s = np.hstack([4 * spk_code, np.zeros((n, 11))]) + rng.normal(size=(n, 16))
        data["x_s"] = x_s.astype(np.float32)
    return data


def test_probe_reads_a_linearly_coded_label_and_not_a_random_one():
    rng = np.random.default_rng(1)
    labels = np.repeat(["a", "b", "c"], 40)
    coded = np.eye(3)[np.repeat([0, 1, 2], 40)] * 5 + rng.normal(size=(120, 3))
    noise = rng.normal(size=(120, 3))
    good = linear_probe_accuracy(coded, labels)
    bad = linear_probe_accuracy(noise, labels)
    assert good["accuracy"] > 0.95 and good["balanced_accuracy"] > 0.95
    assert bad["balanced_accuracy"] < 0.55  # chance is 1/3
    assert good["chance"] == pytest.approx(1 / 3)
    assert good["chance_balanced"] == pytest.approx(1 / 3)
    assert good["n_classes"] == 3 and good["cv"] == 5 and good["dropped"] == 0


def test_probe_chance_is_the_majority_rate_and_folds_shrink_for_rare_classes():
    rng = np.random.default_rng(2)
    labels = np.array(["a"] * 30 + ["b"] * 3 + ["c"])  # "c" has one sample: dropped
    out = linear_probe_accuracy(rng.normal(size=(34, 4)), labels, cv=5)
    assert out["dropped"] == 1 and out["n"] == 33 and out["n_classes"] == 2
    assert out["chance"] == pytest.approx(30 / 33)
    assert out["chance_balanced"] == pytest.approx(0.5)
    assert out["cv"] == 3


def test_probe_is_deterministic_for_a_seed():
    data = _embeddings(80)
    a = linear_probe_accuracy(data["x_e"], data["speaker"], seed=3)
    b = linear_probe_accuracy(data["x_e"], data["speaker"], seed=3)
    assert a == b


def test_probe_rejects_a_single_class_and_bad_shapes():
    with pytest.raises(HcldError, match="at least 2 classes"):
        linear_probe_accuracy(np.zeros((10, 2)), np.array(["a"] * 10))
    with pytest.raises(HcldError, match="expected"):
        linear_probe_accuracy(np.zeros((10, 2)), np.array(["a", "b"] * 4))
    with pytest.raises(HcldError, match="2-D"):
        linear_probe_accuracy(np.zeros(10), np.array(["a", "b"] * 5))
    with pytest.raises(HcldError, match="NaN"):
        linear_probe_accuracy(np.full((10, 2), np.nan), np.array(["a", "b"] * 5))


def test_silhouettes_are_high_for_the_coded_label_and_nan_when_undefined():
    data = _embeddings(120)
    sil = silhouettes(data["x_s"], data["emotion"], data["speaker"])
    assert sil["speaker"] > 0.3 > sil["emotion"]
    one = silhouettes(data["x_s"], np.array(["neu"] * 120), data["speaker"])
    assert np.isnan(one["emotion"])


def test_scorecard_sees_speaker_leaking_into_x_e():
    clean = decoupling_scorecard(_embeddings(200, leak=0.0))
    leaky = decoupling_scorecard(_embeddings(200, leak=1.0))
    assert leaky["speaker_from_x_e_bacc"] > clean["speaker_from_x_e_bacc"] + 0.3
    assert clean["speaker_from_x_e_bacc"] < clean["speaker_chance_balanced"] + 0.15
    assert clean["emotion_from_x_e_bacc"] > 0.9 and clean["speaker_from_x_s_bacc"] > 0.9
    assert clean["emotion_from_x_s_bacc"] < clean["emotion_chance_balanced"] + 0.15
    assert clean["has_x_s"] == 1.0 and clean["n"] == 200
    assert clean["sil_x_e_emotion"] > clean["sil_x_e_speaker"]


def test_scorecard_without_speaker_branch_has_no_x_s_measures(tmp_path):
    path = atomic_save_npz(tmp_path / "run" / "embeddings.npz", **_embeddings(60, with_x_s=False))
    card = decoupling_scorecard(path.parent)  # a run folder works as well as the file
    assert card["has_x_s"] == 0.0
    assert not any("x_s" in k for k in card if k != "has_x_s")
    table = scorecard_table({"emo_only": path, "hcld": _embeddings(60)})
    assert list(table.index) == ["emo_only", "hcld"]
    assert np.isnan(table.loc["emo_only", "emotion_from_x_s_bacc"])
    assert not np.isnan(table.loc["hcld", "emotion_from_x_s_bacc"])


def test_umap_is_deterministic_and_two_dimensional():
    x = _embeddings(60)["x_e"]
    a = umap_embed(x, seed=0, n_neighbors=10)
    b = umap_embed(x, seed=0, n_neighbors=10)
    assert a.shape == (60, 2) and a.dtype == np.float32
    np.testing.assert_allclose(a, b)
    # umap-learn's own kernels are cached on disk, so that the next process loads rather than
    # compiles them (numba's FunctionCache instead of its default NullCache)
    import umap.umap_
    import umap.utils
    from numba.core.caching import FunctionCache

    for kernel in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
                   umap.utils.fast_knn_indices):
        assert isinstance(kernel._cache, FunctionCache), kernel
    with pytest.raises(HcldError, match="at least 4"):
        umap_embed(x[:3])
