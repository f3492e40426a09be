"""The named variants: which terms each one trains, and the readings of the open points.

A variant is a set of term weights (every term of :data:`hcld_lib.method.terms.TERMS` it does not
name has weight 0) and, for a reading of a point the paper leaves open (the README's open-points
table), the term settings it changes from their defaults. ``RunConfig(variant=...)`` in
:mod:`hcld_lib.training.config` applies them; nothing else sets them. The model has a speaker
branch when one of its terms reaches X_s.
"""

from __future__ import annotations

from typing import Any

from hcld_lib.io import HcldError
from hcld_lib.method.models import BRANCHES, ENCODER_ARCHS
from hcld_lib.method.terms import SETTINGS, WEIGHTS

ARCHS: tuple[str, ...] = ENCODER_ARCHS
"""The temporal encoders of the branches: ``cnn``, ``lstm`` (bidirectional), ``transformer``."""

_TASK = dict(w_ce_emotion=1.0, w_ce_speaker=1.0)
#: The full method as printed: L = L_task + L_CLD + L_SCL + L_Label.
_HCLD = dict(**_TASK, w_icld=1.0, w_supcon=1.0, w_lcl=1.0)

VARIANTS: dict[str, dict[str, Any]] = {
    # the paper's Table II
    "emo_only": dict(w_ce_emotion=1.0),  # emotion branch and emotion CE alone
    "orth": dict(**_TASK, w_orth=1.0),  # multi-task with an orthogonality penalty
    "hcld_wo_supcon": {**_HCLD, "w_supcon": 0.0},
    "hcld_wo_lcl": {**_HCLD, "w_lcl": 0.0},
    "hcld": _HCLD,
    # the standard ways of removing speaker information from X_e, beside the paper's
    "adversarial": dict(**_TASK, w_adversarial=1.0),
    "mi": dict(**_TASK, w_mi=1.0),
    # the alternative readings of the open points, each runnable by name
    "hcld_pos_speaker": {**_HCLD, "icld_pos_space": "speaker"},
    "hcld_printed_hinge": {**_HCLD, "icld_hinge": "above"},
    "hcld_supcon_speaker": {**_HCLD, "supcon_space": "speaker"},
    "hcld_lcl_self": {**_HCLD, "lcl_include_self": True},
}

#: The five variants of the paper's Table II, in its row order.
PAPER_VARIANTS: tuple[str, ...] = ("emo_only", "orth", "hcld_wo_supcon", "hcld_wo_lcl", "hcld")

#: Decoupling baselines beyond the paper: their own rows in Table II's layout, no paper column.
BASELINES: tuple[str, ...] = ("adversarial", "mi")

#: The rows of our Table II: the paper's variants, then the baselines beyond it.
TABLE_VARIANTS: tuple[str, ...] = (*PAPER_VARIANTS, *BASELINES)

#: The paper's names of the variants (Table II), and ours for the others.
VARIANT_LABELS: dict[str, str] = {
    "emo_only": "EMO-only",
    "orth": "orth",
    "hcld_wo_supcon": "wo.SupCon",
    "hcld_wo_lcl": "wo.LCL",
    "hcld": "HCLD",
    "adversarial": "adversarial",
    "mi": "MI (CLUB)",
}

VARIANT_FIELDS: tuple[str, ...] = (*WEIGHTS, *sorted(
    {k for v in VARIANTS.values() for k in v} - set(WEIGHTS)))
"""The fields a variant owns: every term weight, and every setting some variant changes."""

_unknown = sorted({k for v in VARIANTS.values() for k in v} - set(WEIGHTS) - set(SETTINGS))
if _unknown:
    raise HcldError(f"VARIANTS set {_unknown}, which are neither term weights nor settings")

#: The allowed values of every switch (checked by ``RunConfig``).
SWITCHES: dict[str, tuple[Any, ...]] = {
    "branches": BRANCHES,
    "emotion_arch": ARCHS,
    **{name: s.choices for name, s in SETTINGS.items() if s.choices is not None},
}


def variant_settings(name: str) -> dict[str, Any]:
    """Every field a variant owns, with its value: its weights (0 for the terms it does not
    name) and the settings it changes (their defaults otherwise)."""
    if name not in VARIANTS:
        raise HcldError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    owned = {k: SETTINGS[k].default for k in VARIANT_FIELDS if k in SETTINGS}
    return {**{w: 0.0 for w in WEIGHTS}, **owned, **VARIANTS[name]}


def variant_label(name: str) -> str:
    """The paper's name of a variant (``"hcld_wo_lcl"`` -> ``"wo.LCL"``), else the name itself."""
    return VARIANT_LABELS.get(name, name)
