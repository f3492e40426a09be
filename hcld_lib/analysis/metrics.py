"""Classification metrics as pure functions (WA, UA, macro-F1, confusion matrix).

The speech-emotion field reports two accuracies:

* **WA** (weighted accuracy) = overall accuracy, ``sum_c n_cc / N``
  (as :func:`sklearn.metrics.accuracy_score`);
* **UA** (unweighted accuracy) = mean per-class recall, ``(1/|C|) sum_c n_cc / n_c``
  (as :func:`sklearn.metrics.balanced_accuracy_score`).

They are computed from one confusion matrix with NumPy (``bincount``): training evaluates three
parts every epoch, and sklearn's input validation cost more than the rest of the evaluation;
the tests check every value against sklearn.

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
    # indices into labels (a prediction outside labels is a wrong answer of no class)
    lookup = {lab: i for i, lab in enumerate(labels_arr.tolist())}
    k = len(lookup)
    t = np.array([lookup[v] for v in y_true.tolist()], dtype=np.int64)
    p = np.array([lookup.get(v, k) for v in y_pred.tolist()], dtype=np.int64)
    cm = np.bincount(t * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # true items per class
    predicted = np.bincount(p, minlength=k + 1)[:k].astype(np.float64)
    present = support > 0
    wa = float(tp.sum() / len(t))
    recall = tp[present] / support[present]
    # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + support); 0 when both are 0
    denominator = predicted[present] + support[present]
    f1_each = np.divide(2 * tp[present], denominator, out=np.zeros_like(denominator),
                        where=denominator > 0)
    ua, f1 = float(recall.mean()), float(f1_each.mean())
    cm = cm[:, :k]
    return dict(
        wa=wa,
        ua=ua,
        f1=f1,
        confusion=cm.astype(int).tolist(),
        labels=labels_arr.tolist(),
        n=int(y_true.size),
    )
