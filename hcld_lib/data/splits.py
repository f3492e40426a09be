"""Evaluation protocols: which utterances train, select, and test each fold.

``paper``
    Stratified K-fold over all utterances (``sklearn.model_selection.StratifiedKFold``, shuffled
    with the seed, stratified by emotion): the paper's random 80/20 split, five times. Every
    utterance is tested exactly once; every speaker appears in training and test, so speaker
    metrics are measured on the test part (``speaker_test == test``).
``loso``
    Leave-one-session-out: one fold per ``session`` (IEMOCAP: 5), speaker-independent, the field's
    standard. The test speakers are never seen in training, so speaker metrics come from
    ``speaker_test``: a seeded part of the training sessions, stratified by speaker, held out
    from both train and validation.

In both, a validation part for model selection is carved from the fold's training part, seeded
and stratified by emotion (``sklearn.model_selection.train_test_split``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from hcld_lib.io import HcldError

PROTOCOLS: tuple[str, ...] = ("paper", "loso")


@dataclass(frozen=True, eq=False)
class Fold:
    """One fold: positional row indices into the utterance table (int64 [n], sorted).

    ``train``, ``val`` and ``test`` are disjoint. ``speaker_test`` is where speaker metrics are
    measured: ``test`` itself for ``paper``; for ``loso`` a held-out part of the training
    sessions, disjoint from ``train``, ``val`` and ``test``.
    """

    index: int
    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    speaker_test: np.ndarray

    def __repr__(self) -> str:
        return (f"Fold(index={self.index}, protocol={self.protocol!r}, train={len(self.train)}, "
                f"val={len(self.val)}, test={len(self.test)}, "
                f"speaker_test={len(self.speaker_test)})")


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _random_state(seed: int, fold: int, purpose: int) -> int:
    """A seed for one carving step, derived from (seed, fold, purpose)."""
    return int(np.random.SeedSequence([int(seed), int(fold), int(purpose)]).generate_state(1)[0])


def _sorted(idx: np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(idx, dtype=np.int64))


def _carve(
    idx: np.ndarray, labels: np.ndarray, fraction: float, random_state: int, what: str, by: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, carved) with ``fraction`` carved, stratified by ``labels[idx]``.

    Classes with a single member stay in ``rest``. Falls back to an unstratified (still seeded)
    split, with a warning, when the carved part would be smaller than the number of classes.
    """
    if fraction <= 0.0 or len(idx) == 0:
        return _sorted(idx), np.zeros(0, dtype=np.int64)
    n_take = int(np.ceil(fraction * len(idx)))
    if n_take >= len(idx):
        raise HcldError(
            f"carving {what} ({fraction:.0%} of {len(idx)} utterances) would leave no training "
            f"utterances: lower the fraction or use a larger corpus"
        )
    y = labels[idx]
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    single = counts[inverse] < 2  # a class of one cannot be in both parts: it stays in `rest`
    pool, kept = idx[~single], idx[single]
    n_classes = int(np.count_nonzero(counts >= 2))
    if n_classes and n_classes <= n_take <= len(pool) - n_classes:
        rest, carved = train_test_split(pool, test_size=n_take, random_state=random_state,
                                        shuffle=True, stratify=labels[pool])
        rest = np.concatenate([rest, kept])
    else:
        warnings.warn(
            f"{what}: {len(idx)} utterances in {len(counts)} {by} classes are too few to "
            f"stratify a {fraction:.0%} split by {by}; using an unstratified seeded split",
            UserWarning,
            stacklevel=4,  # the caller of make_folds (via _paper_folds / _loso_folds)
        )
        rest, carved = train_test_split(idx, test_size=n_take, random_state=random_state,
                                        shuffle=True)
    return _sorted(rest), _sorted(carved)


def _column(table: pd.DataFrame, name: str, protocol: str) -> np.ndarray:
    if name not in table.columns:
        raise HcldError(
            f"protocol {protocol!r} needs a {name!r} column in the utterance table; it has "
            f"{', '.join(map(str, table.columns))}"
        )
    col = table[name]
    if col.isna().any():
        raise HcldError(f"the utterance table has {int(col.isna().sum())} rows without {name}")
    return col.astype(str).to_numpy()


def make_folds(
    table: pd.DataFrame,
    protocol: str = "paper",
    n_folds: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    *,
    speaker_test_fraction: float | None = None,
) -> list[Fold]:
    """Folds of an utterance table under ``protocol``.

    Args:
        table: utterance table (:mod:`hcld_lib.data`); ``emotion`` is needed, and ``session``
            and ``speaker`` for ``loso``.
        protocol: ``"paper"`` (stratified K-fold) or ``"loso"`` (leave-one-session-out).
        n_folds: ``paper``: K (``None`` = 5). ``loso``: one fold per session; ``None`` uses the
            session count, any other value must equal it.
        seed: seeds the K-fold shuffle and every carving; the same seed gives the same folds.
        val_fraction: share of each fold's training part carved off for validation (stratified
            by emotion); 0 leaves ``val`` empty.
        speaker_test_fraction: ``loso`` only: share of the training sessions held out (stratified
            by speaker) for speaker metrics; ``None`` = ``val_fraction``.

    Returns:
        ``n_folds`` :class:`Fold` objects (index 0..K-1; for ``loso`` in natural session order).

    Raises:
        HcldError: unknown protocol, missing columns, a class with fewer utterances than folds,
            fewer than two sessions, or ``n_folds`` not matching the sessions (``loso``).
    """
    if protocol not in PROTOCOLS:
        raise HcldError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise HcldError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if len(table) == 0:
        raise HcldError("the utterance table is empty: nothing to split")
    emotion = _column(table, "emotion", protocol)
    if protocol == "paper":
        return _paper_folds(emotion, n_folds, seed, val_fraction)
    return _loso_folds(table, emotion, n_folds, seed, val_fraction, speaker_test_fraction)


def _paper_folds(emotion: np.ndarray, n_folds: int | None, seed: int,
                 val_fraction: float) -> list[Fold]:
    """``paper``: stratified K-fold over all utterances (``emotion`` [n]), validation carved
    from each training part; ``speaker_test`` is the test part itself.
    """
    k = 5 if n_folds is None else int(n_folds)
    if k < 2:
        raise HcldError(f"n_folds must be at least 2 for protocol 'paper', got {n_folds}")
    names, counts = np.unique(emotion, return_counts=True)
    small = [f"{e}: {c}" for e, c in zip(names, counts) if c < k]
    if small:
        raise HcldError(
            f"protocol 'paper' with {k} folds needs at least {k} utterances per emotion; "
            f"too few for {', '.join(small)}. Use a larger corpus, fewer folds, or drop "
            "those emotions"
        )
    all_idx = np.arange(len(emotion), dtype=np.int64)
    folds: list[Fold] = []
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed))
    for i, (train_part, test) in enumerate(skf.split(all_idx, emotion)):
        train, val = _carve(train_part, emotion, float(val_fraction),
                            _random_state(seed, i, 1), f"fold {i} validation", "emotion")
        test = _sorted(test)
        folds.append(Fold(i, "paper", train, val, test, test))
    return folds


def _loso_sessions(session: np.ndarray, n_folds: int | None) -> list[str]:
    """The sessions in natural order (at least two; as many as ``n_folds`` if given)."""
    sessions = sorted(set(session.tolist()), key=_natural_key)
    if len(sessions) < 2:
        raise HcldError(
            f"protocol 'loso' needs at least two sessions; the table has {len(sessions)} "
            f"({', '.join(sessions)}). Use protocol='paper' or add a session column"
        )
    if n_folds is not None and int(n_folds) != len(sessions):
        raise HcldError(
            f"protocol 'loso' makes one fold per session: the table has {len(sessions)} sessions "
            f"({', '.join(sessions[:10])}{', ...' if len(sessions) > 10 else ''}), not "
            f"n_folds={n_folds}. Pass n_folds={len(sessions)} or n_folds=None"
        )
    return sessions


def _loso_folds(table: pd.DataFrame, emotion: np.ndarray, n_folds: int | None, seed: int,
                val_fraction: float, speaker_test_fraction: float | None) -> list[Fold]:
    """``loso``: one fold per session; from the other sessions, ``speaker_test`` is carved
    (stratified by speaker), then validation (by emotion). Warns when a test speaker also
    appears in training or a test emotion has no training utterances.
    """
    session = _column(table, "session", "loso")
    speaker = _column(table, "speaker", "loso")
    sessions = _loso_sessions(session, n_folds)
    st_fraction = float(val_fraction if speaker_test_fraction is None else speaker_test_fraction)
    if not 0.0 <= st_fraction < 1.0:
        raise HcldError(f"speaker_test_fraction must lie in [0, 1), got {speaker_test_fraction}")
    all_idx = np.arange(len(table), dtype=np.int64)
    folds: list[Fold] = []
    for i, sess in enumerate(sessions):
        in_test = session == sess
        test = all_idx[in_test]
        rest = all_idx[~in_test]
        shared = sorted(set(speaker[in_test]) & set(speaker[~in_test]))
        if shared:
            warnings.warn(
                f"loso fold {i} ({sess}): speakers {', '.join(shared[:10])} also appear in other "
                "sessions, so they are seen in training; the fold is not speaker-independent",
                UserWarning,
                stacklevel=3,  # the caller of make_folds
            )
        rest, speaker_test = _carve(rest, speaker, st_fraction, _random_state(seed, i, 2),
                                    f"fold {i} speaker_test", "speaker")
        train, val = _carve(rest, emotion, float(val_fraction), _random_state(seed, i, 1),
                            f"fold {i} validation", "emotion")
        lacking = sorted(set(emotion[test]) - set(emotion[train]))
        if lacking:
            warnings.warn(
                f"loso fold {i} ({sess}): no training utterances of {', '.join(lacking)}",
                UserWarning,
                stacklevel=3,  # the caller of make_folds
            )
        folds.append(Fold(i, "loso", train, val, _sorted(test), speaker_test))
    return folds


__all__ = ["PROTOCOLS", "Fold", "make_folds"]
