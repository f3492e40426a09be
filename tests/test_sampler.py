"""The batch sampler's guarantee: positives for every need, full coverage, seeded determinism."""

import itertools
import warnings

import numpy as np
import pytest

from hcld_lib.io import HcldError
from hcld_lib.method.sampler import NEEDS, ContrastiveBatchSampler


def _feasible(emotion, speaker, need):
    """Which samples can have a positive for ``need`` at all (brute force, for small N)."""
    same_e = emotion[:, None] == emotion[None, :]
    same_s = speaker[:, None] == speaker[None, :]
    other = ~np.eye(len(emotion), dtype=bool)
    mask = {"emotion": same_e, "speaker": same_s, "speaker_emotion": same_s & ~same_e}[need]
    return (mask & other).any(axis=1)


def _has_positive(emotion, speaker, batch, need):
    """For each position of ``batch``: is there another position holding a positive?"""
    b = np.asarray(batch)
    e, s = emotion[b], speaker[b]
    same_e = e[:, None] == e[None, :]
    same_s = s[:, None] == s[None, :]
    other_sample = b[:, None] != b[None, :]  # a replica of itself is no positive
    mask = {"emotion": same_e, "speaker": same_s, "speaker_emotion": same_s & ~same_e}[need]
    return (mask & other_sample).any(axis=1)


def _random_labels(rng):
    n = int(rng.integers(5, 160))
    n_spk = int(rng.integers(1, 9))
    n_emo = int(rng.integers(1, 5))
    # skewed, sometimes degenerate: speakers with one emotion, classes with one sample
    p = rng.dirichlet(np.full(n_emo, 0.5))
    emotion = np.array(["neu", "hap", "ang", "sad"])[rng.choice(n_emo, n, p=p)]
    speaker = np.array([f"spk{k}" for k in rng.integers(0, n_spk, n)])
    return emotion, speaker


NEED_SETS = [
    c for r in range(len(NEEDS) + 1) for c in itertools.combinations(NEEDS, r)
]


@pytest.mark.parametrize("need", NEED_SETS, ids=lambda n: "+".join(n) or "none")
def test_every_sample_has_a_positive_and_appears(need):
    rng = np.random.default_rng(len(need))
    for trial in range(25):
        emotion, speaker = _random_labels(rng)
        batch_size = int(rng.choice([8, 16, 32]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = ContrastiveBatchSampler(emotion, speaker, batch_size, seed=trial, need=need)
        feasible = {n: _feasible(emotion, speaker, n) for n in need}
        for epoch in range(2):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler)
            seen = np.concatenate([np.asarray(b) for b in batches])
            assert set(seen.tolist()) == set(range(len(emotion))), "a sample was dropped"
            for b in batches:
                assert 1 <= len(b) <= batch_size + 1
                for n in need:
                    ok = _has_positive(emotion, speaker, b, n)
                    assert np.all(ok | ~feasible[n][np.asarray(b)]), (n, b)


def test_epoch_is_not_much_longer_than_the_data():
    rng = np.random.default_rng(0)
    emotion = rng.choice(4, 2000, p=[0.4, 0.3, 0.2, 0.1])
    speaker = rng.integers(0, 10, 2000)
    sampler = ContrastiveBatchSampler(
        emotion, speaker, 32, seed=0, need=("emotion", "speaker_emotion")
    )
    total = sum(len(b) for b in sampler.batches(0))
    assert 2000 <= total <= 2000 * 1.25
    assert np.mean([len(b) for b in sampler.batches(0)]) > 28


def test_seeded_determinism_and_epochs_differ():
    rng = np.random.default_rng(1)
    emotion, speaker = rng.integers(0, 4, 300), rng.integers(0, 6, 300)
    a = ContrastiveBatchSampler(emotion, speaker, 16, seed=3)
    b = ContrastiveBatchSampler(emotion, speaker, 16, seed=3)
    c = ContrastiveBatchSampler(emotion, speaker, 16, seed=4)
    assert a.batches(0) == b.batches(0)
    assert a.batches(5) == b.batches(5)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != c.batches(0)
    # the epoch's batches do not depend on what was asked before (resumable)
    fresh = ContrastiveBatchSampler(emotion, speaker, 16, seed=3)
    fresh.set_epoch(5)
    assert list(fresh) == a.batches(5)


def _iemocap_like(n, seed):
    """``n`` utterances of 10 speakers of uneven size, 4 emotions in IEMOCAP's proportions.

    neutral 1708, happy+excited 1636, angry 1103, sad 1084 utterances overall; the mix varies per
    speaker (some speakers are much angrier or sadder than others).
    """
    rng = np.random.default_rng(seed)
    overall = np.array([1708, 1636, 1103, 1084]) / 5531
    speaker = rng.choice(10, n, p=rng.dirichlet(np.full(10, 20.0)))
    mix = rng.dirichlet(30 * overall, size=10)  # per-speaker emotion proportions
    emotion = np.empty(n, dtype=object)
    for s in range(10):
        rows = np.flatnonzero(speaker == s)
        emotion[rows] = rng.choice(["neu", "hap", "ang", "sad"], len(rows), p=mix[s])
    return emotion.astype(str), np.array([f"Ses{s // 2 + 1}{'FM'[s % 2]}" for s in speaker])


def test_guarantee_on_a_paper_sized_iemocap_like_training_set():
    emotion, speaker = _iemocap_like(4400, seed=0)
    need = ("emotion", "speaker_emotion")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every positive exists in the data: no warning
        sampler = ContrastiveBatchSampler(emotion, speaker, 32, seed=0, need=need)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        seen = np.concatenate([np.asarray(b) for b in batches])
        assert set(seen.tolist()) == set(range(4400)), "a sample was dropped"
        assert len(seen) <= 4400 * 1.05
        assert np.mean([len(b) for b in batches]) > 28
        for b in batches:
            assert 2 <= len(b) <= 33
            assert len(set(speaker[b])) >= 3 and len(set(emotion[b])) >= 3  # batches mix
            for n in need:
                assert _has_positive(emotion, speaker, b, n).all(), (epoch, n, b)


def test_two_separately_built_samplers_give_identical_batches():
    emotion, speaker = _iemocap_like(4400, seed=1)
    need = ("emotion", "speaker", "speaker_emotion")
    a = ContrastiveBatchSampler(emotion, speaker, 32, seed=7, need=need)
    # the same labels in other containers; another epoch asked first
    b = ContrastiveBatchSampler(list(emotion), list(speaker), 32, seed=7, need=list(need))
    b.batches(3)
    for epoch in (0, 1, 4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert all(type(i) is int for batch in a for i in batch)
    assert a.batches(0) != a.batches(1)
    assert a.batches(0) != ContrastiveBatchSampler(emotion, speaker, 32, seed=8,
                                                   need=need).batches(0)


def test_impossible_positive_warns_once_and_terminates():
    # speaker "b" expressed one emotion only: no speaker_emotion positive exists for it
    emotion = np.array(["neu", "hap", "neu", "hap", "ang", "ang", "ang"])
    speaker = np.array(["a", "a", "a", "a", "b", "b", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = ContrastiveBatchSampler(emotion, speaker, 4, seed=0)
        batches = [sampler.batches(e) for e in range(3)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "3 sample(s) without any 'speaker_emotion'" in messages[0]
    for epoch_batches in batches:
        assert set(np.concatenate(epoch_batches).tolist()) == set(range(7))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(HcldError, match="unknown need"):
        ContrastiveBatchSampler([0, 1], [0, 0], 8, need=("gender",))
    with pytest.raises(HcldError, match="batch_size"):
        ContrastiveBatchSampler([0, 1], [0, 0], 2, need=("emotion",))
    with pytest.raises(HcldError, match="equal length"):
        ContrastiveBatchSampler([0, 1], [0], 8)


def test_tiny_batches_on_degenerate_data_terminate():
    # single-sample cells and speakers sharing no emotion pair: units may need more than 4
    rng = np.random.default_rng(5)
    for trial in range(30):
        emotion, speaker = _random_labels(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = ContrastiveBatchSampler(
                emotion, speaker, 4, seed=trial, need=("emotion", "speaker", "speaker_emotion")
            )
        batches = sampler.batches(0)
        assert max(len(b) for b in batches) <= 5
        assert set(np.concatenate(batches).tolist()) == set(range(len(emotion)))
