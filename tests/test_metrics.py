"""Metrics on predictions worked out by hand."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from hcld_lib.analysis.metrics import classification_metrics
from hcld_lib.io import HcldError


def test_imbalanced_wa_and_ua_differ():
    # 8 "neu", 2 "ang"; the classifier always says "neu":
    # WA = 8/10 = 0.8; UA = (8/8 + 0/2) / 2 = 0.5
    # F1(neu) = 2 * 0.8 * 1 / 1.8 = 8/9, F1(ang) = 0 -> macro 4/9
    y_true = ["neu"] * 8 + ["ang"] * 2
    y_pred = ["neu"] * 10
    m = classification_metrics(y_true, y_pred, labels=["neu", "ang"])
    assert m["wa"] == pytest.approx(0.8)
    assert m["ua"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(4 / 9)
    assert m["confusion"] == [[8, 0], [2, 0]]
    assert m["labels"] == ["neu", "ang"]
    assert m["n"] == 10


def test_mixed_case_by_hand():
    # true 0: 3 items, 2 right; true 1: 1 item, right; true 2: 2 items, 0 right (both -> 1)
    y_true = [0, 0, 0, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 1]
    m = classification_metrics(y_true, y_pred, labels=[0, 1, 2])
    assert m["wa"] == pytest.approx(3 / 6)
    assert m["ua"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 2, 0]]


def test_label_absent_from_truth_is_left_out_of_ua_and_f1():
    # "sad" never occurs in y_true: UA averages over neu and hap only;
    # the confusion matrix still has a (zero) row for it.
    y_true = ["neu", "neu", "hap", "hap"]
    y_pred = ["neu", "sad", "hap", "hap"]
    m = classification_metrics(y_true, y_pred, labels=["neu", "hap", "sad"])
    assert m["wa"] == pytest.approx(0.75)
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)
    # F1(neu) = 2 * 1 * 0.5 / 1.5 = 2/3, F1(hap) = 1
    assert m["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["confusion"][2] == [0, 0, 0]
    assert np.array(m["confusion"]).sum() == 4


def test_bad_input_is_a_clear_error():
    with pytest.raises(HcldError, match="equal length"):
        classification_metrics([0, 1], [0], labels=[0, 1])
    with pytest.raises(HcldError, match="at least one"):
        classification_metrics([], [], labels=[0, 1])
    with pytest.raises(HcldError, match="not in labels"):
        classification_metrics([0, 5], [0, 0], labels=[0, 1])


@pytest.mark.parametrize("seed", range(5))
def test_every_value_matches_sklearn(seed):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    rng = np.random.default_rng(seed)
    labels = ["neu", "hap", "ang", "sad", "fru"]
    y_true = rng.choice(labels[:4], size=int(rng.integers(5, 300)), p=[0.5, 0.3, 0.15, 0.05])
    y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.choice(labels, len(y_true)))
    m = classification_metrics(y_true, y_pred, labels=labels)
    present = [lab for lab in labels if np.any(y_true == lab)]
    assert m["wa"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert m["ua"] == pytest.approx(
        recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0), abs=1e-12)
    assert m["f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0), abs=1e-12)
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
