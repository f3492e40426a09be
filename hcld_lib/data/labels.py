"""The utterance table every loader returns, and the emotion classes.

One row per utterance, the columns

=================  ===========================================================================
``utterance_id``   unique string
``path``           absolute path of the audio file (string)
``speaker``        speaker id (IEMOCAP: session + the actor's gender letter, e.g. ``Ses01M``)
``emotion``        one of :data:`EMOTIONS` (``neu``, ``hap``, ``ang``, ``sad``)
``session``        recording session (IEMOCAP: ``Session1``..``Session5``); the unit of ``loso``
``gender``         ``"F"``, ``"M"`` or ``""`` (unknown)
``duration``       seconds, where known
=================  ===========================================================================
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import pandas as pd

EMOTIONS: tuple[str, ...] = ("neu", "hap", "ang", "sad")
"""The 4-class IEMOCAP set, in the order used for labels and tables (exc is merged into hap)."""

TABLE_COLUMNS: tuple[str, ...] = ("utterance_id", "path", "speaker", "emotion", "session", "gender")
"""The columns every utterance table has (``duration`` follows where known)."""

_MAX_LISTED = 10


def emotion_order(values: Iterable[object]) -> list[str]:
    """The emotion classes among ``values``: those of :data:`EMOTIONS` present, in that order,
    then any other label (a manifest corpus) in sorted order."""
    present = {str(v) for v in values}
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def listing(items: list[str], total: int | None = None) -> str:
    """``items`` one per line, at most ten, then '... and N more' (for error messages)."""
    total = len(items) if total is None else total
    lines = [f"  {x}" for x in items[:_MAX_LISTED]]
    if total > _MAX_LISTED:
        lines.append(f"  ... and {total - _MAX_LISTED} more")
    return "\n".join(lines)


def warn_missing_emotions(table: pd.DataFrame, source: str, stacklevel: int = 2) -> None:
    """Warn when ``table`` lacks one of :data:`EMOTIONS`, saying which emotions it has (with
    counts): models trained on it would tell fewer emotions apart than the paper's four, and
    nothing later would say so. ``source`` names the corpus (its folder or manifest);
    ``stacklevel`` 2 points the warning at the caller of the function that calls this one."""
    counts = table["emotion"].astype(str).value_counts()
    missing = [e for e in EMOTIONS if e not in counts.index]
    if not missing or table.empty:
        return
    found = emotion_order(counts.index)
    warnings.warn(
        f"{source} has no {', '.join(missing)} utterances: its emotions are "
        f"{', '.join(f'{e} ({counts[e]})' for e in found)}, so models trained on it tell "
        f"{len(found)} emotions apart, not the {len(EMOTIONS)} of {', '.join(EMOTIONS)} (tables "
        f"and figures will have {len(found)} classes)",
        UserWarning, stacklevel=stacklevel + 1)
