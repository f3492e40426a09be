"""How long a run trains: the plateau rule, and what a run reports at a shorter budget.

**The plateau rule.** A fold's validation part is small (48 utterances in the quick profile), so
its emotion UA jumps by several points from one epoch to the next, and a rule on the raw curve
stops runs at a peak of noise. The rule watches the trailing mean of the last ``window`` epochs::

    s_t   = 1/w_t sum_{u = t - w_t + 1}^{t} v_u,      w_t = min(window, t)
    b_t   = the epoch of the best s_u, u <= t (a later epoch counts as a new best only when it
            beats the old one by more than ``min_delta``)
    holds at t   <=>   t >= window  and  t - b_t >= patience

where ``v_t`` is the validation emotion UA after epoch ``t``. The *plateau epoch* of a run is the
first ``t`` at which the rule holds; a run that never reaches it within its epochs has not
converged. With ``stop_at_plateau`` a run stops there (but not before ``min_epochs``); either way
the model kept is the epoch with the best raw validation UA (the earlier on ties), as always.

**Budgets.** The learning rate is constant after the warm-up and the batches of an epoch depend
only on (seed, epoch), so the first ``B`` epochs of any run are exactly the run a budget of ``B``
epochs would have trained. :func:`at_budget` gives what that shorter run reports (its selected
epoch and that epoch's history row) from the longer run's history; a run must have trained at
least ``B`` epochs (``min_epochs`` guarantees it for the budgets of a profile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hcld_lib.io import HcldError

SCORE = "val_emotion_ua"
"""The history column the plateau rule and the model selection read."""


def smoothed(values: Sequence[float], window: int) -> np.ndarray:
    """The trailing mean ``s_t`` of the module docstring, ``[len(values)]`` (NaN stays NaN)."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise HcldError(f"window={window} must be >= 1")
    # each mean from its own values (not a running sum), so equal windows give equal means and
    # a flat curve is never a gain by rounding
    return np.array([v[max(0, t - window):t].mean() for t in range(1, len(v) + 1)])


def plateau_epoch(values: Sequence[float], patience: int, window: int,
                  min_delta: float = 0.0) -> int | None:
    """The first epoch (1-based) at which the plateau rule holds on the validation curve
    ``values`` (module docstring); ``None`` if it never does or the curve is all NaN (no
    validation part: nothing to judge convergence by)."""
    if patience < 1:
        raise HcldError(f"patience={patience} must be >= 1")
    s = smoothed(values, window)
    best, best_at = -np.inf, 0
    for t, value in enumerate(s, start=1):
        if np.isnan(value):
            return None
        if value > best + min_delta or best_at == 0:
            best, best_at = value, t
        if t >= window and t - best_at >= patience:
            return t
    return None


def scores(history: Sequence[Mapping[str, Any]], score: str = SCORE,
           lower_is_better: bool = False) -> list[float]:
    """The column ``score`` of ``history`` (NaN where missing), negated when lower is better, so
    that the plateau rule and the selection always read a higher-is-better curve."""
    sign = -1.0 if lower_is_better else 1.0
    return [sign * float(row.get(score, np.nan)) for row in history]


def should_stop(history: Sequence[Mapping[str, Any]], *, max_epochs: int, stop_at_plateau: bool,
                patience: int, window: int, min_epochs: int, score: str = SCORE,
                lower_is_better: bool = False) -> bool:
    """Whether a run with ``history`` (one row per epoch done) trains no further epoch; the
    plateau rule reads the column ``score`` (cluster pretraining: its held-out loss, lower is
    better)."""
    done = len(history)
    if done >= max_epochs:
        return True
    if not stop_at_plateau or done < min(min_epochs, max_epochs):
        return False
    return plateau_epoch(scores(history, score, lower_is_better), patience, window) is not None


def selected_epoch(values: Sequence[float]) -> int:
    """The epoch (1-based) with the best validation score, the earlier on ties; the last epoch
    when there is no score (no validation part)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        raise HcldError("no epoch to select from")
    if np.isnan(v).all():
        return len(v)
    return int(np.nanargmax(v)) + 1


def at_budget(history: Sequence[Mapping[str, Any]], budget: int) -> dict[str, Any]:
    """What the run would report had it trained ``budget`` epochs: the history row of its
    selected epoch among the first ``budget`` (module docstring).

    Raises:
        HcldError: the run trained fewer than ``budget`` epochs.
    """
    if budget < 1 or len(history) < budget:
        raise HcldError(f"budget={budget} epochs: the run trained {len(history)}; only budgets "
                        f"of 1..{len(history)} epochs can be read from it (raise min_epochs)")
    first = history[:budget]
    epoch = selected_epoch([row.get(SCORE, np.nan) for row in first])
    return dict(first[epoch - 1])
