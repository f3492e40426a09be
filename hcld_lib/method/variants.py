"""The named variants of the method: which branches and loss terms each one trains.

The total loss of one batch (see :mod:`hcld_lib.method.losses`) is

    L = w_te CE(emotion) + w_ts CE(speaker) + w_cld L_CLD + w_sc L_SupCon + w_lab L_Label
        + w_orth L_orth

and a variant fixes these weights, whether the model has a speaker branch, and the switches of
the terms (the readings of the points the paper leaves open: see the README's open-points
table). :data:`VARIANT_DEFAULTS` is the full method as printed (our defaults where the paper is
silent); :data:`VARIANTS` lists each variant's departures from it. ``RunConfig(variant=...)`` in
:mod:`hcld_lib.training.config` applies them; nothing else sets them.
"""

from __future__ import annotations

from typing import Any

from hcld_lib.io import HcldError
from hcld_lib.method.losses import HINGES, ORTH_FORMS, POS_SPACES
from hcld_lib.method.models import BRANCHES, ENCODER_ARCHS

ARCHS: tuple[str, ...] = ENCODER_ARCHS
"""The temporal encoders of the branches: ``cnn``, ``lstm`` (bidirectional), ``transformer``."""

SUPCON_SPACES: tuple[str, ...] = ("emotion", "speaker")

#: The full method, every term on, the defaults of the open points.
VARIANT_DEFAULTS: dict[str, Any] = dict(
    speaker_branch=True,
    w_task_emotion=1.0,
    w_task_speaker=1.0,
    w_cld=1.0,
    w_supcon=1.0,
    w_label=1.0,
    w_orth=0.0,
    pos_space="emotion",
    hinge="text",
    supcon_space="emotion",
    lcl_include_self=False,
)

VARIANT_FIELDS: tuple[str, ...] = tuple(VARIANT_DEFAULTS)
"""The fields a variant owns (every one of them is set by every variant)."""

#: Each variant's departures from :data:`VARIANT_DEFAULTS`.
VARIANTS: dict[str, dict[str, Any]] = {
    # emotion branch and emotion CE alone
    "emo_only": dict(
        speaker_branch=False, w_task_speaker=0.0, w_cld=0.0, w_supcon=0.0, w_label=0.0
    ),
    # multi-task with an orthogonality penalty between X_e and X_s instead of HCLD
    "orth": dict(w_cld=0.0, w_supcon=0.0, w_label=0.0, w_orth=1.0),
    # the full method: L = L_task + L_CLD + L_SCL + L_Label
    "hcld": dict(),
    "hcld_wo_supcon": dict(w_supcon=0.0),
    "hcld_wo_lcl": dict(w_label=0.0),
    # the alternative readings of the open points, each runnable by name
    "hcld_pos_speaker": dict(pos_space="speaker"),
    "hcld_printed_hinge": dict(hinge="printed"),
    "hcld_supcon_speaker": dict(supcon_space="speaker"),
    "hcld_lcl_self": dict(lcl_include_self=True),
}

#: The five variants of the paper's Table II, in its row order.
PAPER_VARIANTS: tuple[str, ...] = ("emo_only", "orth", "hcld_wo_supcon", "hcld_wo_lcl", "hcld")

#: The paper's names of the variants (Table II).
VARIANT_LABELS: dict[str, str] = {
    "emo_only": "EMO-only",
    "orth": "orth",
    "hcld_wo_supcon": "wo.SupCon",
    "hcld_wo_lcl": "wo.LCL",
    "hcld": "HCLD",
}

#: The allowed values of every switch (checked by ``RunConfig``).
SWITCHES: dict[str, tuple[Any, ...]] = {
    "pos_space": POS_SPACES,
    "hinge": HINGES,
    "supcon_space": SUPCON_SPACES,
    "orth_form": ORTH_FORMS,
    "branches": BRANCHES,
    "emotion_arch": ARCHS,
}


def variant_settings(name: str) -> dict[str, Any]:
    """Every field a variant owns, with its value: :data:`VARIANT_DEFAULTS` + its departures."""
    if name not in VARIANTS:
        raise HcldError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    return {**VARIANT_DEFAULTS, **VARIANTS[name]}


def variant_label(name: str) -> str:
    """The paper's name of a variant (``"hcld_wo_lcl"`` -> ``"wo.LCL"``), else the name itself."""
    return VARIANT_LABELS.get(name, name)
