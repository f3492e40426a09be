"""Protocols: disjoint parts, every utterance tested once, unseen test speakers, determinism."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from hcld_lib.data.labels import EMOTIONS
from hcld_lib.data.splits import Fold, make_folds
from hcld_lib.io import HcldError


def _table(n: int = 420, seed: int = 0, n_sessions: int = 5) -> pd.DataFrame:
    """An IEMOCAP-shaped table (no audio needed): 2 speakers per session, skewed emotions."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s = i % n_sessions + 1
        g = "FM"[(i // n_sessions) % 2]
        p = np.array([0.4, 0.3, 0.2, 0.1]) if g == "F" else np.array([0.1, 0.2, 0.3, 0.4])
        rows.append(dict(utterance_id=f"u{i:04d}", path=f"/x/u{i:04d}.wav",
                         speaker=f"Ses{s:02d}{g}", emotion=rng.choice(EMOTIONS, p=p),
                         session=f"Session{s}", gender=g))
    return pd.DataFrame(rows)


def _check_arrays(fold: Fold, n: int) -> None:
    for part in (fold.train, fold.val, fold.test, fold.speaker_test):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats
        assert part.size == 0 or (part.min() >= 0 and part.max() < n)


def test_paper_folds_partition_and_test_each_utterance_once() -> None:
    table = _table()
    folds = make_folds(table, "paper", seed=0)
    assert len(folds) == 5 and [f.index for f in folds] == list(range(5))
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(table)))
    overall = table["emotion"].value_counts(normalize=True)
    for f in folds:
        _check_arrays(f, len(table))
        assert f.protocol == "paper"
        assert np.array_equal(f.speaker_test, f.test)
        parts = [set(f.train), set(f.val), set(f.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == len(table)
        assert len(f.val) == pytest.approx(0.1 * (len(table) - len(f.test)), abs=1)
        # stratified: every part close to the overall emotion shares
        for part in (f.test, f.val):
            share = table["emotion"].iloc[part].value_counts(normalize=True)
            assert (share.reindex(overall.index, fill_value=0) - overall).abs().max() < 0.06


def test_loso_test_speakers_never_train() -> None:
    table = _table()
    folds = make_folds(table, "loso", seed=0)
    assert [f.index for f in folds] == list(range(5))
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(table)))
    spk = table["speaker"].to_numpy()
    for f in folds:
        _check_arrays(f, len(table))
        assert set(table["session"].iloc[f.test]) == {f"Session{f.index + 1}"}
        parts = [set(f.train), set(f.val), set(f.test), set(f.speaker_test)]
        for a in range(4):
            for b in range(a + 1, 4):
                assert not parts[a] & parts[b], (a, b)
        assert sum(map(len, parts)) == len(table)
        test_speakers = set(spk[f.test])
        assert not test_speakers & set(spk[f.train])
        assert not test_speakers & set(spk[f.val])
        assert not test_speakers & set(spk[f.speaker_test])
        # speaker metrics on held-out utterances of every training speaker
        assert set(spk[f.speaker_test]) == set(spk[f.train])


def test_loso_sessions_in_natural_order_and_speaker_test_fraction() -> None:
    table = _table(n=600, n_sessions=12)
    folds = make_folds(table, "loso", speaker_test_fraction=0.2, val_fraction=0.0)
    assert [table["session"].iloc[f.test[0]] for f in folds] == [
        f"Session{i}" for i in range(1, 13)]
    f = folds[0]
    assert len(f.val) == 0
    assert len(f.speaker_test) == pytest.approx(0.2 * (len(table) - len(f.test)), abs=1)


def test_folds_are_seeded() -> None:
    table = _table()
    for protocol in ("paper", "loso"):
        a = make_folds(table, protocol, seed=3)
        b = make_folds(table, protocol, seed=3)
        c = make_folds(table, protocol, seed=4)
        for fa, fb in zip(a, b):
            for name in ("train", "val", "test", "speaker_test"):
                assert np.array_equal(getattr(fa, name), getattr(fb, name))
        assert any(not np.array_equal(fa.val, fc.val) for fa, fc in zip(a, c))
    assert not np.array_equal(make_folds(table, "paper", seed=3)[0].test,
                              make_folds(table, "paper", seed=4)[0].test)


def test_unknown_protocol() -> None:
    with pytest.raises(HcldError, match="unknown protocol 'random'.*paper, loso"):
        make_folds(_table(), "random")


def test_too_few_utterances_per_class() -> None:
    table = _table(n=60)
    table.loc[table["emotion"] == "sad", "emotion"] = "neu"
    table.loc[:2, "emotion"] = "sad"
    with pytest.raises(HcldError, match=r"at least 5 utterances per emotion.*sad: 3"):
        make_folds(table, "paper")
    assert len(make_folds(table, "paper", n_folds=3)) == 3


def test_loso_fold_count_must_match_sessions() -> None:
    with pytest.raises(HcldError, match=r"4 sessions.*not n_folds=5.*n_folds=4"):
        make_folds(_table(n_sessions=4), "loso", n_folds=5)
    assert len(make_folds(_table(n_sessions=4), "loso", n_folds=4)) == 4
    with pytest.raises(HcldError, match="at least two sessions"):
        make_folds(_table().assign(session="one"), "loso")


def test_missing_column_and_empty_table() -> None:
    with pytest.raises(HcldError, match="needs a 'session' column"):
        make_folds(_table().drop(columns="session"), "loso")
    with pytest.raises(HcldError, match="empty"):
        make_folds(_table().iloc[:0], "paper")


def test_tiny_parts_fall_back_to_unstratified_with_a_warning() -> None:
    table = _table(n=40)
    with pytest.warns(UserWarning, match="too few to stratify"):
        folds = make_folds(table, "paper", val_fraction=0.05)
    assert all(len(f.val) == 2 for f in folds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_folds(_table(), "paper")


def test_loso_warns_when_a_speaker_spans_sessions() -> None:
    table = _table()
    table.loc[0, "speaker"] = table.loc[1, "speaker"]  # a Session1 row labelled as Session2's F
    with pytest.warns(UserWarning, match="not speaker-independent"):
        make_folds(table, "loso")
