"""Classification metrics as pure functions (WA, UA, macro-F1, confusion matrix).

The speech-emotion field reports two accuracies:

* **WA** (weighted accuracy) = overall accuracy, ``sum_c n_cc / N``
  (:func:`sklearn.metrics.accuracy_score`);
* **UA** (unweighted accuracy) = mean per-class recall, ``(1/|C|) sum_c n_cc / n_c``
  (:func:`sklearn.metrics.balanced_accuracy_score`).

When a label of ``labels`` does not occur in ``y_true`` (a small fold, a held-out speaker who never
expressed one emotion) its recall is undefined. We average recall over the labels that *do* occur
in ``y_true`` only, which is what ``balanced_accuracy_score`` does, and we take macro-F1 over the
same labels, so that both averages describe the same set of classes. The confusion matrix keeps
every label of ``labels`` (rows = true, columns = predicted), absent ones as zero rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from hcld_lib.io import HcldError


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    labels: Sequence[Any] | np.ndarray,
) -> dict[str, Any]:
    """WA, UA, macro-F1 and the confusion matrix of one set of predictions.

    Args:
        y_true: true labels ``[N]`` (strings or integers).
        y_pred: predicted labels ``[N]``, same kind as ``y_true``.
        labels: the label set, in the order of the confusion matrix's rows and columns.

    Returns:
        ``dict(wa, ua, f1, confusion, labels, n)``: floats in [0, 1]; ``confusion`` is a list of
        lists of ints ``[len(labels), len(labels)]``; ``labels`` is a list of plain Python values;
        ``n`` the number of predictions. UA and F1 are averaged over the labels present in
        ``y_true`` (see the module docstring).

    Raises:
        HcldError: if the inputs are empty, differ in length, or ``y_true`` holds a label that is
            not in ``labels``.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels_arr = np.asarray(labels)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise HcldError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and of equal length"
        )
    if y_true.size == 0:
        raise HcldError("classification_metrics needs at least one prediction (got none)")
    unknown = np.setdiff1d(np.unique(y_true), labels_arr)
    if unknown.size:
        raise HcldError(f"y_true holds labels {unknown.tolist()} that are not in labels")
    present = [lab for lab in labels_arr.tolist() if np.any(y_true == lab)]
    wa = float(accuracy_score(y_true, y_pred))
    # mean recall over the labels that occur in y_true (= balanced_accuracy_score)
    ua = float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    f1 = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    cm = confusion_matrix(y_true, y_pred, labels=labels_arr)
    return dict(
        wa=wa,
        ua=ua,
        f1=f1,
        confusion=cm.astype(int).tolist(),
        labels=labels_arr.tolist(),
        n=int(y_true.size),
    )
