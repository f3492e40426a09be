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

from collections.abc import Iterable

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
