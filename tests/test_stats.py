"""The verdict rule on hand-made cases with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from hcld_lib.analysis.stats import (
    VERDICTS,
    compare,
    paired_bootstrap,
    paired_differences,
    t_interval,
    verdict,
    verdict_sentence,
)
from hcld_lib.io import HcldError

T_2_975 = 4.302652729911275  # t_{2, 0.975}


def _runs() -> pd.DataFrame:
    # hcld - emo_only per (fold, seed): (0,0) 2, (0,1) 1, (1,0) 3; (1,1) only for hcld -> dropped;
    # (2,0) only for emo_only -> dropped; an lstm row of hcld that `where` must filter out.
    rows = [
        ("hcld", "cnn", 0, 0, 72.0), ("hcld", "cnn", 0, 1, 71.0), ("hcld", "cnn", 1, 0, 73.0),
        ("hcld", "cnn", 1, 1, 99.0), ("hcld", "lstm", 0, 0, 10.0),
        ("emo_only", "cnn", 0, 0, 70.0), ("emo_only", "cnn", 0, 1, 70.0),
        ("emo_only", "cnn", 1, 0, 70.0), ("emo_only", "cnn", 2, 0, 50.0),
    ]
    return pd.DataFrame(rows, columns=["variant", "arch", "fold", "seed", "emo_ua"])


# --- t_interval -------------------------------------------------------------------------------

def test_t_interval_by_hand():
    r = t_interval([1.0, 2.0, 3.0])
    half = T_2_975 * 1.0 / math.sqrt(3)
    assert r["mean"] == pytest.approx(2.0, abs=1e-9)
    assert r["sd"] == pytest.approx(1.0, abs=1e-9)
    assert r["ci_low"] == pytest.approx(2.0 - half, abs=1e-9)
    assert r["ci_high"] == pytest.approx(2.0 + half, abs=1e-9)
    assert r["n_pairs"] == 3


def test_t_interval_one_or_no_pair_has_nan_interval():
    r = t_interval([1.5])
    assert r["mean"] == 1.5 and r["n_pairs"] == 1
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and math.isnan(r["sd"])
    r0 = t_interval([])
    assert r0["n_pairs"] == 0 and math.isnan(r0["mean"]) and math.isnan(r0["ci_low"])


def test_t_interval_rejects_nan_and_bad_level():
    with pytest.raises(HcldError, match="NaN"):
        t_interval([1.0, float("nan")])
    with pytest.raises(HcldError, match="level"):
        t_interval([1.0, 2.0], level=95)


# --- verdict ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "lo, hi, sign, n, expected",
    [
        (0.5, 2.0, +1, 10, "held"),
        (-2.0, -0.5, +1, 10, "contradicted"),
        (-1.0, 1.0, +1, 10, "not shown"),
        (-2.0, -0.5, -1, 10, "held"),
        (0.5, 2.0, -1, 10, "contradicted"),
        (-1.0, 1.0, -1, 10, "not shown"),
        (0.0, 2.0, +1, 10, "not shown"),          # touching 0 does not exclude it
        (0.5, 2.0, +4.4, 10, "held"),             # only the sign of the paper's difference counts
        (0.5, 2.0, +1, 2, "too few runs"),
        (0.5, 2.0, float("nan"), 10, "not comparable"),
        (0.5, 2.0, float("nan"), 2, "not comparable"),
        (0.5, 2.0, 0.0, 10, "not comparable"),
    ],
)
def test_verdict_cases(lo, hi, sign, n, expected):
    assert verdict(lo, hi, sign, n) == expected
    assert expected in VERDICTS


def test_verdict_min_pairs():
    assert verdict(0.5, 2.0, 1, 4, min_pairs=5) == "too few runs"
    assert verdict(0.5, 2.0, 1, 5, min_pairs=5) == "held"


# --- paired_differences -----------------------------------------------------------------------

def test_paired_differences_pairs_and_drops_unpaired():
    d = paired_differences(_runs(), "hcld", "emo_only", "emo_ua", where={"arch": "cnn"})
    assert d.index.names == ["fold", "seed"]
    assert d.to_dict() == {(0, 0): 2.0, (0, 1): 1.0, (1, 0): 3.0}


def test_paired_differences_ignores_row_order():
    runs = _runs()
    shuffled = runs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    d1 = paired_differences(runs, "hcld", "emo_only", "emo_ua", where={"arch": "cnn"})
    d2 = paired_differences(shuffled, "hcld", "emo_only", "emo_ua", where={"arch": ["cnn"]})
    pd.testing.assert_series_equal(d1, d2)


def test_paired_differences_drops_nan_metric():
    runs = _runs()
    runs.loc[(runs["variant"] == "emo_only") & (runs["fold"] == 1), "emo_ua"] = float("nan")
    d = paired_differences(runs, "hcld", "emo_only", "emo_ua", where={"arch": "cnn"})
    assert list(d.index) == [(0, 0), (0, 1)]


def test_paired_differences_errors():
    runs = _runs()
    with pytest.raises(HcldError, match="where"):   # two archs share (0, 0) for hcld
        paired_differences(runs, "hcld", "emo_only", "emo_ua")
    with pytest.raises(HcldError, match="no column"):
        paired_differences(runs, "hcld", "emo_only", "spk_ua")
    with pytest.raises(HcldError, match="HCLD"):
        paired_differences(runs, "HCLD", "emo_only", "emo_ua", where={"arch": "cnn"})


def test_compare_combines_the_steps():
    r = compare(_runs(), "hcld", "emo_only", "emo_ua", paper_diff=4.47, where={"arch": "cnn"})
    assert set(r) == {"mean", "ci_low", "ci_high", "n_pairs", "verdict"}
    assert r["n_pairs"] == 3 and r["mean"] == pytest.approx(2.0)
    # diffs 2, 1, 3: the hand case, 2 ± 4.3027 / sqrt(3) = [-0.48, 4.48] holds 0 -> not shown
    assert r["ci_low"] == pytest.approx(2.0 - T_2_975 / math.sqrt(3))
    assert r["ci_high"] == pytest.approx(2.0 + T_2_975 / math.sqrt(3))
    assert r["verdict"] == "not shown"
    # tighter runs: diffs 2.0, 2.2, 1.8 -> 2 ± 4.3027 * 0.2 / sqrt(3) = [1.50, 2.50]
    tight = _runs()
    tight.loc[(tight["variant"] == "hcld") & (tight["arch"] == "cnn"), "emo_ua"] = [
        72.0, 72.2, 71.8, 99.0]
    assert compare(tight, "hcld", "emo_only", "emo_ua", 4.47,
                   where={"arch": "cnn"})["verdict"] == "held"
    assert compare(tight, "hcld", "emo_only", "emo_ua", -1.0,
                   where={"arch": "cnn"})["verdict"] == "contradicted"
    assert compare(_runs(), "hcld", "emo_only", "emo_ua", float("nan"),
                   where={"arch": "cnn"})["verdict"] == "not comparable"
    none = compare(_runs(), "hcld", "emo_only", "emo_ua", 1.0, where={"arch": "transformer"})
    assert none["n_pairs"] == 0 and none["verdict"] == "too few runs"


# --- paired_bootstrap -------------------------------------------------------------------------

def test_bootstrap_identical_predictions_give_exact_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    for metric in ("ua", "wa"):
        r = paired_bootstrap(pred, pred, y, n_boot=500, metric=metric)
        assert (r["mean"], r["ci_low"], r["ci_high"], r["observed"]) == (0.0, 0.0, 0.0, 0.0)
        assert r["n_items"] == 200


def test_bootstrap_all_right_vs_all_wrong_is_100_points():
    y = np.array(["neu", "ang", "hap", "sad"] * 10 + ["neu"] * 20)
    wrong = np.array([{"neu": "ang", "ang": "hap", "hap": "sad", "sad": "neu"}[v] for v in y])
    assert not np.any(wrong == y)
    for metric in ("ua", "wa"):
        r = paired_bootstrap(y, wrong, y, n_boot=300, metric=metric)
        assert (r["mean"], r["ci_low"], r["ci_high"], r["observed"]) == (100.0, 100.0, 100.0, 100.0)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    a = np.where(rng.random(300) < 0.7, y, 0)
    b = np.where(rng.random(300) < 0.6, y, 1)
    assert paired_bootstrap(a, b, y, seed=7) == paired_bootstrap(a, b, y, seed=7)
    assert paired_bootstrap(a, b, y, seed=7) != paired_bootstrap(a, b, y, seed=8)


def test_bootstrap_mean_near_plug_in_difference():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(3)
    n = 2000
    y = rng.choice(4, size=n, p=[0.5, 0.2, 0.2, 0.1])
    a = np.where(rng.random(n) < 0.75, y, rng.integers(0, 4, n))
    b = np.where(rng.random(n) < 0.65, y, rng.integers(0, 4, n))
    for metric, score in (("ua", balanced_accuracy_score), ("wa", accuracy_score)):
        plug_in = 100 * (score(y, a) - score(y, b))
        r = paired_bootstrap(a, b, y, n_boot=2000, seed=0, metric=metric)
        assert r["observed"] == pytest.approx(plug_in, abs=1e-9)
        assert r["mean"] == pytest.approx(plug_in, abs=0.3)
        assert r["ci_low"] < plug_in < r["ci_high"]
        assert 1.0 < r["ci_high"] - r["ci_low"] < 10.0


def test_bootstrap_bad_inputs():
    with pytest.raises(HcldError, match="equal length"):
        paired_bootstrap([0, 1, 1], [0, 1], [0, 1, 1])
    with pytest.raises(HcldError, match="none"):
        paired_bootstrap([], [], [])
    with pytest.raises(HcldError, match="metric"):
        paired_bootstrap([0], [0], [0], metric="f1")
    with pytest.raises(HcldError, match="n_boot"):
        paired_bootstrap([0], [0], [0], n_boot=0)


# --- verdict_sentence -------------------------------------------------------------------------

def test_verdict_sentence_format():
    r = dict(mean=1.23, ci_low=-0.44, ci_high=2.81, n_pairs=10, verdict="not shown")
    assert verdict_sentence("HCLD vs EMO-only (cnn)", r) == (
        "HCLD vs EMO-only (cnn): +1.2 UA points, 95 % CI [-0.4, +2.8] over 10 (fold, seed) "
        "pairs: not shown."
    )
    one = dict(mean=-0.01, ci_low=float("nan"), ci_high=float("nan"), n_pairs=1,
               verdict="too few runs")
    assert verdict_sentence("x", one, unit="WA points") == (
        "x: +0.0 WA points, 95 % CI n/a over 1 (fold, seed) pair: too few runs."
    )
    boot = dict(mean=2.0, ci_low=0.5, ci_high=3.5, n_items=5531, observed=2.0)
    assert verdict_sentence("b", boot, level=0.9) == (
        "b: +2.0 UA points, 90 % CI [+0.5, +3.5] over 5531 utterances (bootstrap)."
    )
