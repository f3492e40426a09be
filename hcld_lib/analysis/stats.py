"""One verdict rule for "variant A beats variant B", used by every chapter and table.

The paper reports one number per variant; we compare two variants ``a`` and ``b`` (e.g. HCLD vs
EMO-only) on a metric of the runs table (percent, e.g. ``emo_ua`` = 71.6), so every difference
here is in **percent points**, ``metric(a) - metric(b)``.

* **Pairing by (fold, seed).** Runs of ``a`` and ``b`` with the same fold and seed saw the same
  train/test split and the same initial draw, so their difference ``d_i = m_i(a) - m_i(b)``
  cancels what the two runs share (an easy fold, a lucky seed). A pair missing on either side is
  dropped (:func:`paired_differences`).
* **t-interval over pairs** (:func:`t_interval`): ``mean(d) ± t_{n-1, (1+level)/2} sd(d) /
  sqrt(n)``, ``sd`` with ``n - 1``. It reflects run-to-run variation: training noise and folds.
* **Paired bootstrap over utterances** (:func:`paired_bootstrap`): resamples test utterances
  (pooled across folds) with replacement, the same indices for both variants, and gives a
  percentile interval of ``metric(a) - metric(b)``. It reflects test-set sampling of utterances
  for fixed trained models, which the t-interval does not see. Both are reported; **the verdict
  uses the t-interval**.
* **Verdict** (:func:`verdict`), given the sign of the paper's difference ``a - b``:

  - ``"held"``: the interval excludes 0 on the paper's side (``paper > 0`` and ``ci_low > 0``, or
    ``paper < 0`` and ``ci_high < 0``): we reproduce the paper's ordering;
  - ``"contradicted"``: the interval excludes 0 on the other side: the opposite ordering;
  - ``"not shown"``: the interval contains 0: our runs cannot tell the two variants apart;
  - ``"too few runs"``: fewer than ``min_pairs`` pairs: no verdict is given;
  - ``"not comparable"``: the paper gives no difference (NaN) or exactly 0 (no side).

:func:`compare` chains the three steps; :func:`verdict_sentence` prints the result the same way
in every chapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.io import HcldError

__all__ = ["VERDICTS", "compare", "paired_bootstrap", "paired_differences", "t_half_width",
           "t_interval", "verdict", "verdict_sentence"]

#: Every value :func:`verdict` returns.
VERDICTS: tuple[str, ...] = ("held", "contradicted", "not shown", "too few runs", "not comparable")

_NAN = float("nan")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise HcldError(f"level={level!r} must lie strictly between 0 and 1 (e.g. 0.95)")


def paired_differences(
    runs: pd.DataFrame, a: str, b: str, metric: str,
    by: Sequence[str] = ("fold", "seed"), where: Mapping[str, Any] | None = None,
) -> pd.Series:
    """Per-pair differences ``d_i = metric(a) - metric(b)``, paired on the ``by`` keys.

    Args:
        runs: one row per run, with a ``variant`` column, the ``by`` columns and ``metric``.
        a, b: the two variants; ``metric``: a column of ``runs`` (e.g. ``"emo_ua"``, percent).
        by: the keys that pair a run of ``a`` with a run of ``b``.
        where: filters on other columns applied first, ``{column: value}`` or
            ``{column: [values]}`` (e.g. ``{"arch": "cnn"}``).

    Returns:
        float Series ``[n_pairs]`` indexed by the ``by`` keys (sorted), named ``"metric: a - b"``.
        Keys present on one side only, and pairs with a NaN metric on either side, are dropped.

    Raises:
        HcldError: if a column is missing, ``a`` or ``b`` is not a variant of ``runs``, or a
            variant has more than one row for a key (narrow it with ``where``, e.g. the arch).
    """
    by = [by] if isinstance(by, str) else list(by)
    where = dict(where or {})
    missing = [c for c in ["variant", metric, *by, *where] if c not in runs.columns]
    if missing:
        raise HcldError(f"runs has no column(s) {missing}; its columns are {list(runs.columns)}")
    for name in (a, b):
        if not (runs["variant"] == name).any():
            known = sorted(runs["variant"].unique())
            raise HcldError(f"no run of variant {name!r}; runs holds {known}")
    keep = pd.Series(True, index=runs.index)
    for col, val in where.items():
        many = isinstance(val, list | tuple | set | frozenset)
        keep &= runs[col].isin(list(val)) if many else runs[col] == val
    sub = runs[keep]
    sides = []
    for name in (a, b):
        side = sub[sub["variant"] == name]
        dup = side.duplicated(subset=by, keep=False)
        if dup.any():
            raise HcldError(
                f"variant {name!r} has {int(dup.sum())} rows sharing a ({', '.join(by)}) key "
                f"(where={where}); add a `where` filter (e.g. arch) so each key occurs once"
            )
        sides.append(side.set_index(by)[metric].astype(float))
    both = pd.concat(sides, axis=1, keys=["a", "b"], join="inner").dropna()
    return (both["a"] - both["b"]).sort_index().rename(f"{metric}: {a} - {b}")


def t_half_width(sd: Any, n: Any, level: float = 0.95) -> Any:
    """Half-width of the Student-t interval of a mean, ``t_{n-1, (1+level)/2} * sd / sqrt(n)``;
    NaN for ``n < 2``. ``sd`` and ``n`` may be arrays (or Series) of equal shape."""
    n = np.asarray(n, dtype=float)
    dof = np.where(n >= 2, n - 1, np.nan)
    from scipy import stats as sps  # here: scipy.stats costs a training worker 0.7 s to import

    half = sps.t.ppf((1 + level) / 2, dof) * np.asarray(sd, dtype=float) / np.sqrt(n)
    return float(half) if np.ndim(half) == 0 else half


def t_interval(diffs: Sequence[float] | np.ndarray | pd.Series, level: float = 0.95) -> dict:
    """Mean of the paired differences with its Student-t interval.

    ``mean ± t_{n-1, (1+level)/2} * sd / sqrt(n)``, ``sd`` the sample standard deviation
    (``ddof=1``). With ``n < 2`` the interval and ``sd`` are NaN (and with ``n = 0`` the mean).

    Returns: ``dict(mean, ci_low, ci_high, n_pairs, sd)``, floats in the unit of ``diffs``.
    Raises: HcldError if ``diffs`` is not 1-D or holds NaN / inf, or ``level`` is not in (0, 1).
    """
    _check_level(level)
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1:
        raise HcldError(f"diffs must be 1-D (got shape {d.shape})")
    if not np.isfinite(d).all():
        bad = int((~np.isfinite(d)).sum())
        raise HcldError(f"diffs holds {bad} NaN/inf values; drop them first")
    n = int(d.size)
    mean = float(d.mean()) if n else _NAN
    if n < 2:
        return dict(mean=mean, ci_low=_NAN, ci_high=_NAN, n_pairs=n, sd=_NAN)
    sd = float(d.std(ddof=1))
    half = t_half_width(sd, n, level)
    return dict(mean=mean, ci_low=mean - half, ci_high=mean + half, n_pairs=n, sd=sd)


def _scores(counts: np.ndarray, onehot: np.ndarray, correct: np.ndarray, metric: str) -> np.ndarray:
    """Metric in percent of each resample; ``counts [R, N]`` times drawn, ``onehot [N, C]``."""
    if metric == "wa":
        return 100.0 * (counts @ correct) / counts.sum(axis=1)
    n_c = counts @ onehot                                  # [R, C] items of class c drawn
    hits = counts @ (onehot * correct[:, None])            # [R, C] of them predicted right
    present = n_c > 0
    recall = np.divide(hits, n_c, out=np.zeros_like(hits), where=present)
    return 100.0 * recall.sum(axis=1) / present.sum(axis=1)


def paired_bootstrap(
    pred_a: Sequence[Any] | np.ndarray, pred_b: Sequence[Any] | np.ndarray,
    y_true: Sequence[Any] | np.ndarray, n_boot: int = 2000, seed: int = 0,
    metric: str = "ua", level: float = 0.95,
) -> dict:
    """Paired bootstrap over test utterances of ``metric(a) - metric(b)``, in percent points.

    Each resample draws ``N`` utterance indices with replacement, the same indices for both
    variants (the pairing), and computes the difference on them: UA = mean over the classes
    present in the resample of recall, WA = accuracy. Resamples are drawn as count matrices in
    blocks (no loop over resamples); the result depends only on the inputs and ``seed``.

    Args:
        pred_a, pred_b: predicted labels ``[N]`` of the two variants on the same utterances, in
            the same order (test parts pooled across folds; one prediction per utterance).
        y_true: true labels ``[N]``; any comparable kind (strings, ints).
        n_boot: number of resamples; seed: of :func:`numpy.random.default_rng`.
        metric: ``"ua"`` or ``"wa"``; level: of the percentile interval.

    Returns:
        ``dict(mean, ci_low, ci_high, n_items, observed)``: ``mean`` over resamples, the
        percentile interval, the number of utterances and the plug-in difference on all of them.

    Raises:
        HcldError: on empty or non-1-D inputs, lengths that differ, ``n_boot < 1`` or an unknown
            ``metric``.
    """
    _check_level(level)
    if metric not in ("ua", "wa"):
        raise HcldError(f"metric={metric!r} is not known; use 'ua' or 'wa'")
    if int(n_boot) < 1:
        raise HcldError(f"n_boot={n_boot!r} must be at least 1 (e.g. 2000)")
    arrays = dict(pred_a=np.asarray(pred_a), pred_b=np.asarray(pred_b), y_true=np.asarray(y_true))
    shapes = {k: v.shape for k, v in arrays.items()}
    if any(v.ndim != 1 for v in arrays.values()) or len(set(shapes.values())) != 1:
        raise HcldError(f"pred_a, pred_b and y_true must be 1-D and of equal length (got {shapes})")
    n = arrays["y_true"].size
    if n == 0:
        raise HcldError("paired_bootstrap needs at least one utterance (got none)")
    y = arrays["y_true"]
    correct_a = (arrays["pred_a"] == y).astype(float)
    correct_b = (arrays["pred_b"] == y).astype(float)
    onehot = (y[:, None] == np.unique(y)[None, :]).astype(float)      # [N, C]
    all_once = np.ones((1, n))
    observed = float((_scores(all_once, onehot, correct_a, metric)
                      - _scores(all_once, onehot, correct_b, metric))[0])
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // n)                  # bound memory to ~2M counts per block
    diffs = []
    for start in range(0, int(n_boot), block):
        r = min(block, int(n_boot) - start)
        idx = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
        counts = np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(float)
        diffs.append(_scores(counts, onehot, correct_a, metric)
                     - _scores(counts, onehot, correct_b, metric))
    d = np.concatenate(diffs)
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return dict(mean=float(d.mean()), ci_low=float(lo), ci_high=float(hi), n_items=int(n),
                observed=observed)


def verdict(ci_low: float, ci_high: float, paper_sign: float, n_pairs: int,
            min_pairs: int = 3) -> str:
    """The verdict of an interval against the sign of the paper's difference (module docstring).

    Order of checks: NaN or zero ``paper_sign`` -> ``"not comparable"``; ``n_pairs < min_pairs``
    -> ``"too few runs"``; then ``"held"`` / ``"contradicted"`` / ``"not shown"``. Only the sign
    of ``paper_sign`` is used, so the paper's difference itself may be passed.
    """
    if paper_sign is None or not np.isfinite(paper_sign) or paper_sign == 0:
        return "not comparable"
    if n_pairs < min_pairs:
        return "too few runs"
    if (paper_sign > 0 and ci_low > 0) or (paper_sign < 0 and ci_high < 0):
        return "held"
    if (paper_sign > 0 and ci_high < 0) or (paper_sign < 0 and ci_low > 0):
        return "contradicted"
    return "not shown"


def compare(
    runs: pd.DataFrame, a: str, b: str, metric: str, paper_diff: float,
    by: Sequence[str] = ("fold", "seed"), where: Mapping[str, Any] | None = None,
    level: float = 0.95, min_pairs: int = 3,
) -> dict:
    """:func:`paired_differences`, then :func:`t_interval`, then :func:`verdict`.

    ``paper_diff`` is the paper's ``metric(a) - metric(b)`` (NaN when it has none).
    Returns: ``dict(mean, ci_low, ci_high, n_pairs, verdict)``, the columns of the tables.
    """
    ci = t_interval(paired_differences(runs, a, b, metric, by=by, where=where), level=level)
    v = verdict(ci["ci_low"], ci["ci_high"], paper_diff, ci["n_pairs"], min_pairs=min_pairs)
    return dict(mean=ci["mean"], ci_low=ci["ci_low"], ci_high=ci["ci_high"],
                n_pairs=ci["n_pairs"], verdict=v)


def _signed(x: float, digits: int) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    v = round(float(x), digits)
    return f"{(v if v != 0 else 0.0):+.{digits}f}"     # no "-0.0"


def verdict_sentence(label: str, result: Mapping[str, Any], unit: str = "UA points",
                     level: float = 0.95, by: Sequence[str] = ("fold", "seed"),
                     digits: int = 1) -> str:
    """One line for a :func:`compare` (or :func:`paired_bootstrap`) result, e.g.

    ``"HCLD vs EMO-only (cnn): +1.2 UA points, 95 % CI [-0.4, +2.8] over 10 (fold, seed) pairs:
    not shown."`` A bootstrap result (``n_items``, no verdict) ends
    ``"over N utterances (bootstrap)."``.
    """
    ci = (f"[{_signed(result['ci_low'], digits)}, {_signed(result['ci_high'], digits)}]"
          if np.isfinite(result["ci_low"]) else "n/a")
    if "n_pairs" in result:
        n = int(result["n_pairs"])
        keys = by if isinstance(by, str) else f"({', '.join(by)})" if len(by) > 1 else by[0]
        over = f"{n} {keys} pair{'' if n == 1 else 's'}"
    else:
        over = f"{int(result['n_items'])} utterances (bootstrap)"
    text = (f"{label}: {_signed(result['mean'], digits)} {unit}, "
            f"{100 * level:g} % CI {ci} over {over}")
    return f"{text}: {result['verdict']}." if "verdict" in result else f"{text}."
