"""The plateau rule and the budgets read from a history, on curves worked out by hand."""

import math

import numpy as np
import pytest

from hcld_lib.io import HcldError
from hcld_lib.training.stopping import (
    at_budget,
    plateau_epoch,
    selected_epoch,
    should_stop,
    smoothed,
)


def test_smoothed_is_the_trailing_mean_over_at_most_window_epochs():
    np.testing.assert_allclose(smoothed([3, 1, 2, 6], 2), [3, 2, 1.5, 4])
    np.testing.assert_allclose(smoothed([3, 1, 2, 6], 3), [3, 2, 2, 3])
    np.testing.assert_allclose(smoothed([3, 1, 2, 6], 1), [3, 1, 2, 6])


def test_plateau_epoch_on_a_curve_worked_by_hand():
    # window 1 (raw), patience 2: best at epoch 2 (0.6); epochs 3 and 4 do not beat it -> 4
    assert plateau_epoch([0.5, 0.6, 0.55, 0.6], patience=2, window=1) == 4
    # a tie is not a gain; a later gain restarts the count
    assert plateau_epoch([0.5, 0.6, 0.61, 0.6, 0.6], patience=2, window=1) == 5
    assert plateau_epoch([0.5, 0.6, 0.61, 0.6], patience=2, window=1) is None
    # min_delta: a gain of 0.01 does not count when 0.02 is asked for
    assert plateau_epoch([0.5, 0.6, 0.61, 0.6], patience=2, window=1, min_delta=0.02) == 4


def test_smoothing_keeps_a_noise_peak_from_stopping_the_run():
    # a slowly rising curve with one lucky epoch (0.75 at epoch 4): on the raw curve the best is
    # epoch 4 and epochs 5, 6, 7 do not beat it, so the rule fires at 7; the trailing mean of 3
    # epochs (.5 .525 .55 .633 .657 .67 .64 .66 .68 .70 .713 .72 .72 .72 .72) dips after the
    # peak, climbs past it at epoch 9 and keeps rising to .72 at epoch 12: it fires at 12 + 3
    curve = [0.5, 0.55, 0.6, 0.75, 0.62, 0.64, 0.66, 0.68, 0.70, 0.72, 0.72, 0.72, 0.72, 0.72,
             0.72]
    assert plateau_epoch(curve, patience=3, window=1) == 7
    np.testing.assert_allclose(smoothed(curve, 3)[[3, 6, 8, 11]], [0.1 * 19 / 3, 0.64, 0.68, 0.72])
    assert plateau_epoch(curve, patience=3, window=3) == 15
    assert plateau_epoch(curve[:14], patience=3, window=3) is None
    # the rule never fires before a whole window exists
    assert plateau_epoch([0.9, 0.1, 0.1], patience=1, window=3) == 3


def test_plateau_needs_a_validation_curve():
    assert plateau_epoch([math.nan] * 5, patience=1, window=1) is None
    with pytest.raises(HcldError, match="patience=0"):
        plateau_epoch([0.5], patience=0, window=1)


def _rows(curve):
    return [{"epoch": i + 1, "val_emotion_ua": v, "test_emotion_ua": 1 - v}
            for i, v in enumerate(curve)]


def test_should_stop_respects_max_and_min_epochs():
    rows = _rows([0.5, 0.6, 0.55, 0.6, 0.5])
    kw = dict(patience=2, window=1)
    assert should_stop(rows[:4], max_epochs=10, stop_at_plateau=True, min_epochs=1, **kw)
    assert not should_stop(rows[:4], max_epochs=10, stop_at_plateau=True, min_epochs=5, **kw)
    assert should_stop(rows[:5], max_epochs=10, stop_at_plateau=True, min_epochs=5, **kw)
    assert not should_stop(rows[:4], max_epochs=10, stop_at_plateau=False, min_epochs=1, **kw)
    assert should_stop(rows[:4], max_epochs=4, stop_at_plateau=False, min_epochs=1, **kw)
    assert not should_stop(rows[:3], max_epochs=10, stop_at_plateau=True, min_epochs=1, **kw)


def test_selection_and_budgets_read_from_a_history():
    rows = _rows([0.5, 0.7, 0.6, 0.7, 0.8])
    assert selected_epoch([r["val_emotion_ua"] for r in rows]) == 5
    assert selected_epoch([0.5, 0.7, 0.7]) == 2  # the earlier on ties
    assert selected_epoch([math.nan, math.nan]) == 2  # no validation part: the last epoch
    assert at_budget(rows, 4)["epoch"] == 2  # best of the first 4 (tie 2 / 4 -> 2)
    assert at_budget(rows, 4)["test_emotion_ua"] == pytest.approx(0.3)
    assert at_budget(rows, 5)["epoch"] == 5
    with pytest.raises(HcldError, match="trained 5"):
        at_budget(rows, 6)
