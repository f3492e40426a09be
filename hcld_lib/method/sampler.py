"""Batches in which every sample has a positive for each contrastive term in use.

SupCon, the label-anchored loss and ICLD only learn from pairs that are present in the batch. The
paper "replicates and downsamples" so that every sample in a batch has at least one positive.
:class:`ContrastiveBatchSampler` does this with explicit *needs*:

=====================  =========================================  ===============================
need                   a positive of sample i is a sample j with  used by
=====================  =========================================  ===============================
``"emotion"``          the same emotion                           SupCon on X_e, the LCL
``"speaker"``          the same speaker                           SupCon on X_s (speaker labels)
``"speaker_emotion"``  the same speaker and a different emotion   ICLD's positive pairs
=====================  =========================================  ===============================

An epoch is built from *units*: small groups of samples in which every member has, inside the
unit, a positive (a different sample, never itself) for every need that it can satisfy at all in
the data. Units are never split across batches, so the guarantee holds batch by batch whatever
else the batch holds. The units of an epoch are formed for all samples at once (array operations,
no loop over samples) in two levels, then checked, and only the few that fail the check are
completed one by one:

1. **Within a speaker.** With ``"speaker_emotion"``: the ``m_s`` samples of each speaker who
   expressed at least two emotions are sorted by emotion (emotions in a random order per
   speaker, samples in a random order per cell) and laid on a circle of ``m_s`` places at a
   random rotation, so each emotion is an arc; each place ``q < m_s - h_s`` is paired with the
   place ``q + h_s``, ``h_s = ceil(m_s / 2)``. The two ends of a pair are ``floor(m_s / 2)`` or
   more places apart both ways round, so an emotion that holds at most half of the places never
   holds both, and a pair ``(s, e), (s, e')`` has ``e != e'``. A sample left over (odd ``m_s``)
   or in a pair of one emotion (that emotion holds more than half of the speaker) is paired
   instead with a random sample of the same speaker and another emotion (a *replica*).
   ``"speaker"`` splits the samples not paired yet (all of them without ``"speaker_emotion"``,
   else those of speakers with a single emotion) per speaker (per speaker-emotion cell when
   ``"emotion"`` is needed too), in a random order, into groups of two, the last group of three
   when the count is odd. With ``("emotion", "speaker")`` only, the samples alone in their cell
   are then paired within their speaker as above and go on to level 2.
2. **Across speakers** (``"emotion"``). The pairs of level 1 are keyed by their emotion pair
   ``{e, e'}`` and joined two by two in a random order within the key, giving squares
   ``(s, e), (s, e'), (s', e), (s', e')`` (``s' = s`` is allowed); an odd pair out is joined to a
   random other pair of its key (replicas). Samples still on their own (everything for
   ``need=("emotion",)``; speakers with a single emotion) are split by emotion into groups of
   two, the last of three when the count is odd.
3. **Check and repair.** For every unit and need the number of distinct members that match
   (same emotion; same speaker; same speaker with another emotion) is counted at once. A unit
   that fails (degenerate data: single-sample cells, a key ``{e, e'}`` held by one pair only, a
   replica that repeats a member) is completed greedily: the next partner comes from the
   speaker-emotion cell that meets the most open needs of the unit while opening the fewest new
   ones (ties at random), as a random member of that cell not yet in the unit. If it still fails
   when it reaches ``batch_size`` members, it is dissolved and each member not yet covered
   starts its own greedy unit.

A typical unit is therefore a square of four for ``("emotion", "speaker_emotion")`` and for all
three needs, and a pair (or three) for a single need, ``("emotion", "speaker")`` and
``("speaker", "speaker_emotion")``.

* **Coverage.** Every sample is put into exactly one unit of levels 1-2 and a repair keeps every
  member of the unit it repairs, so every sample appears at least once per epoch, and no class is
  ever dropped.
* **Replicate.** A sample appears more than once only as a replica: the partner of a left-over or
  one-emotion pair in level 1 (about ``max(0, 2 max_e n_se - n_s) + (n_s mod 2)`` per speaker
  ``s`` with ``n_s`` samples, ``n_se`` of emotion ``e``), the second pair of an odd key in level
  2 (2 samples per key ``{e, e'}`` with an odd number of pairs), and the partners added by a
  repair. Minority items thus appear more than once, and the epoch is slightly longer than the
  data (for IEMOCAP-like labels 0.5-5 % of 800 samples, 0.2-2 % of 4400, more when one emotion
  dominates a speaker; the exact length depends on the labels).
* **Downsample.** The epoch is not the set of all pairs: each sample takes part in one unit (plus
  its replicas) and partners are drawn at random, so the pair set is a random subsample,
  reshuffled every epoch.
* **Impossible positives.** A sample that has no possible partner in the whole data (a speaker
  who expressed one emotion only has no ``speaker_emotion`` positive; a class with one sample
  has no ``emotion`` positive) is still used, the need is skipped for it, and one warning per
  sampler says how many samples are affected.
* **Termination.** Levels 1-2 and the check are array operations without a search loop; a repair
  grows a unit by one sample per step and closes it after at most ``batch_size`` members. Units
  of four usually suffice; in degenerate data a unit may need up to about eight, so with
  ``batch_size < 8`` the guarantee can fail there (the unit is cut at ``batch_size``).

**Packing.** The units are put in a random order and packed greedily (a batch is closed when the
next unit does not fit, so batches can be a few samples short of ``batch_size``). A final batch
of a single sample is merged into the previous one (a batch of one breaks batch statistics).
Without needs the units are single samples, i.e. plain shuffled batches.

**Determinism.** Every random choice of an epoch comes from ``numpy.random.default_rng([seed,
epoch])`` in a fixed order, so the batches are a function of ``(labels, batch_size, need, seed,
epoch)`` only: a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from hcld_lib.io import HcldError

NEEDS: tuple[str, ...] = ("emotion", "speaker", "speaker_emotion")


def _runs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each element of ``sorted_keys``: the start and the length of its run of equal keys."""
    m = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, m])
    return np.repeat(starts, counts), np.repeat(counts, counts)


def _groups(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split the elements of each key, in a random order, into groups of two (last of three).

    Returns a group id per element, unique within ``[0, len(keys))``. A key with a single
    element gives a group of one.
    """
    m = len(keys)
    order = np.lexsort((rng.random(m), keys))
    start, count = _runs(keys[order])
    pos = np.arange(m) - start
    group = pos // 2
    group -= (count % 2 == 1) & (count >= 3) & (pos == count - 1)
    out = np.empty(m, dtype=np.int64)
    out[order] = start + group
    return out


class ContrastiveBatchSampler(Sampler[list[int]]):
    """A seeded batch sampler whose batches hold a positive for each need of every sample.

    Args:
        emotion: emotion label of each sample ``[N]`` (any hashable labels).
        speaker: speaker label of each sample ``[N]``.
        batch_size: maximum number of samples in a batch (at least 4 when a need is given).
        seed: base seed; the batches of an epoch depend on ``(seed, epoch)`` only.
        need: the positives to guarantee, a subset of ``("emotion", "speaker",
            "speaker_emotion")``; empty = plain shuffled batches.

    Yields lists of sample indices (``list[int]``); call :meth:`set_epoch` before each epoch
    (``len`` and iteration refer to the current epoch).
    """

    def __init__(
        self,
        emotion: Sequence[Any] | np.ndarray,
        speaker: Sequence[Any] | np.ndarray,
        batch_size: int,
        seed: int = 0,
        need: Sequence[str] = ("emotion", "speaker_emotion"),
    ) -> None:
        emotion = np.asarray(emotion)
        speaker = np.asarray(speaker)
        if emotion.ndim != 1 or emotion.shape != speaker.shape or emotion.size == 0:
            raise HcldError(
                f"emotion {emotion.shape} and speaker {speaker.shape} must be non-empty 1-D "
                "arrays of equal length"
            )
        bad = [n for n in need if n not in NEEDS]
        if bad:
            raise HcldError(f"unknown need(s) {bad}; choose from {NEEDS}")
        self.need = tuple(n for n in NEEDS if n in need)
        min_batch = 4 if self.need else 1
        if batch_size < min_batch:
            raise HcldError(f"batch_size={batch_size} must be >= {min_batch} for need={self.need}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0
        self.n = int(emotion.size)
        _, emo = np.unique(emotion, return_inverse=True)
        _, spk = np.unique(speaker, return_inverse=True)
        self._emo, self._spk = emo.astype(np.int64), spk.astype(np.int64)
        self._n_emo, self._n_spk = int(self._emo.max()) + 1, int(self._spk.max()) + 1
        n_cells = self._n_spk * self._n_emo
        self._cell = self._spk * self._n_emo + self._emo
        self._cell_emo = np.arange(n_cells) % self._n_emo
        self._cell_spk = np.arange(n_cells) // self._n_emo
        # samples sorted by cell (= by speaker, then emotion): a cell and a speaker are a slice
        self._by_cell = np.argsort(self._cell, kind="stable")
        self._cell_sizes = np.bincount(self._cell, minlength=n_cells)
        self._cell_start = np.r_[0, np.cumsum(self._cell_sizes)[:-1]]
        sizes = self._cell_sizes.reshape(self._n_spk, self._n_emo)
        self._spk_sizes = sizes.sum(axis=1)
        # which needs each sample (each cell) can satisfy at all in the data
        self._cell_feasible = {
            "emotion": np.tile(sizes.sum(axis=0) >= 2, self._n_spk),
            "speaker": np.repeat(self._spk_sizes >= 2, self._n_emo),
            "speaker_emotion": np.repeat((sizes > 0).sum(axis=1) >= 2, self._n_emo),
        }
        self._feasible = {n: f[self._cell] for n, f in self._cell_feasible.items()}
        missing = {n: int((~self._feasible[n]).sum()) for n in self.need}
        missing = {n: k for n, k in missing.items() if k}
        if missing:
            detail = ", ".join(
                f"{k} sample(s) without any '{n}' positive" for n, k in missing.items()
            )
            warnings.warn(
                f"ContrastiveBatchSampler: {detail} in the data (e.g. a speaker with a single "
                "emotion, a class with one sample); these samples are still used, without that "
                "positive.",
                stacklevel=2,
            )
        self._cache: tuple[int, list[list[int]]] | None = None

    # --- public ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` and ``__len__`` refer to."""
        self.epoch = int(epoch)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches (lists of sample indices) of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._build_epoch(epoch))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches()])

    def __len__(self) -> int:
        return len(self.batches())

    # --- building an epoch ----------------------------------------------------------------------
    def _build_epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        if not self.need:
            members = rng.permutation(self.n)
            return self._pack(members, np.ones(self.n, dtype=np.int64))
        members, unit = self._template_units(rng)
        members, unit = self._repair(members, unit, rng)
        # the units in a random order; members keep their order inside a unit
        _, unit, sizes = np.unique(unit, return_inverse=True, return_counts=True)
        rank = rng.permutation(len(sizes))
        order = np.argsort(rank[unit], kind="stable")
        return self._pack(members[order], sizes[np.argsort(rank)])

    def _template_units(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Levels 1-2: every sample in a unit. Returns members and a unit key per member."""
        members: list[np.ndarray] = []
        units: list[np.ndarray] = []
        offset = 0

        def add(m: np.ndarray, u: np.ndarray, span: int) -> None:
            nonlocal offset
            members.append(m)
            units.append(u + offset)
            offset += span

        alone = np.ones(self.n, dtype=bool)  # not yet in a group of two or more
        if "speaker_emotion" in self.need:
            pairable = np.flatnonzero(self._feasible["speaker_emotion"])
            alone[pairable] = False
            a, b = self._speaker_emotion_pairs(pairable, rng)
            if "emotion" in self.need:
                m, u = self._squares(a, b, rng)
                add(m, u, len(a))
            else:
                ids = np.arange(len(a))
                add(np.stack([a, b], axis=1).ravel(), np.repeat(ids, 2), len(a))
        if "speaker" in self.need:
            idx = np.flatnonzero(alone & self._feasible["speaker"])
            key = self._cell[idx] if "emotion" in self.need else self._spk[idx]
            group = _groups(key, rng)
            size = np.bincount(group, minlength=len(idx))[group]
            alone[idx[size >= 2]] = False
            add(idx[size >= 2], group[size >= 2], len(idx))
            if "emotion" in self.need and "speaker_emotion" not in self.need:
                # a single-sample cell: pair it in its speaker, then join pairs as in level 2
                single = idx[size == 1]
                alone[single] = False
                a, b = self._speaker_emotion_pairs(single, rng)
                m, u = self._squares(a, b, rng)
                add(m, u, len(a))
        idx = np.flatnonzero(alone)
        if "emotion" in self.need:
            add(idx, _groups(self._emo[idx], rng), len(idx))
        else:
            add(idx, np.arange(len(idx)), len(idx))
        return np.concatenate(members), np.concatenate(units)

    def _speaker_emotion_pairs(
        self, idx: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Level 1: pair the samples ``idx`` within their speaker, across emotions.

        Each speaker of ``idx`` must have samples of another emotion in the data (the replicas
        of a left-over or one-emotion pair are drawn from all of the speaker's samples).
        """
        m = len(idx)
        spk, emo = self._spk[idx], self._emo[idx]
        emotion_rank = np.argsort(rng.random((self._n_spk, self._n_emo)), axis=1).argsort(axis=1)
        order = np.lexsort((rng.random(m), emotion_rank[spk, emo], spk))
        start, count = _runs(spk[order])
        rotation = rng.integers(0, count)[start]  # one rotation per speaker
        circle = np.empty(m, dtype=np.int64)
        circle[start + (np.arange(m) - start + rotation) % count] = idx[order]
        place = np.arange(m) - start
        half = (count + 1) // 2
        first = np.flatnonzero(place < count - half)
        a, b = circle[first], circle[first + half[first]]
        leftover = circle[(count % 2 == 1) & (place == half - 1)]
        same = self._emo[a] == self._emo[b]
        lone = np.concatenate([leftover, a[same], b[same]])
        a, b = a[~same], b[~same]
        return np.concatenate([a, lone]), np.concatenate([b, self._other_emotion(lone, rng)])

    def _other_emotion(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random sample of the same speaker as each of ``x``, with another emotion."""
        if len(x) == 0:
            return x
        cell, spk = self._cell[x], self._spk[x]
        spk_start = self._cell_start[spk * self._n_emo]
        before = self._cell_start[cell] - spk_start  # the cell's offset within its speaker
        size = self._cell_sizes[cell]
        r = rng.integers(0, self._spk_sizes[spk] - size)
        return self._by_cell[spk_start + r + (r >= before) * size]

    def _squares(
        self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Level 2: join speaker-emotion pairs two by two within their emotion pair ``{e, e'}``."""
        p = len(a)
        ea, eb = self._emo[a], self._emo[b]
        key = np.minimum(ea, eb) * self._n_emo + np.maximum(ea, eb)
        order = np.lexsort((rng.random(p), key))
        start, count = _runs(key[order])
        pos = np.arange(p) - start
        unit = np.empty(p, dtype=np.int64)
        unit[order] = start + pos // 2
        # the odd pair out of a key gets a random other pair of its key as a replica
        odd = np.flatnonzero((count % 2 == 1) & (pos == count - 1) & (count >= 2))
        other = order[start[odd] + rng.integers(0, count[odd] - 1)]
        pairs = np.concatenate([np.arange(p), other])
        unit = np.concatenate([unit, unit[order[odd]]])
        members = np.stack([a[pairs], b[pairs]], axis=1).ravel()
        return members, np.repeat(unit, 2)

    def _failing_units(self, members: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Keys of the units in which a member misses a positive it could have (sorted)."""
        n_emo, n_spk, n_cells = self._n_emo, self._n_spk, len(self._cell_sizes)
        both = np.unique(unit * self.n + members)  # distinct (unit, member)
        u, m = both // self.n, both % self.n
        _, u = np.unique(u, return_inverse=True)
        bad = np.zeros(len(m), dtype=bool)

        def count(code: np.ndarray) -> np.ndarray:
            _, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
            return counts[inverse]

        for n in self.need:
            if n == "emotion":
                met = count(u * n_emo + self._emo[m]) >= 2
            elif n == "speaker":
                met = count(u * n_spk + self._spk[m]) >= 2
            else:  # distinct cells of the member's speaker in the unit
                cells = np.unique(u * n_cells + self._cell[m])
                per_speaker = np.bincount(cells // n_emo, minlength=(u.max() + 1) * n_spk)
                met = per_speaker[u * n_spk + self._spk[m]] >= 2
            bad |= self._feasible[n][m] & ~met
        return np.unique((both // self.n)[bad])

    def _repair(
        self, members: np.ndarray, unit: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Step 3: complete, one by one, the units that fail the check."""
        failing = self._failing_units(members, unit)
        if len(failing) == 0:
            return members, unit
        is_failing = np.isin(unit, failing)
        kept_m, kept_u = [members[~is_failing]], [unit[~is_failing]]
        next_key = int(unit.max()) + 1
        order = np.argsort(unit[is_failing], kind="stable")
        failed_m, failed_u = members[is_failing][order], unit[is_failing][order]
        bounds = np.flatnonzero(np.r_[True, failed_u[1:] != failed_u[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            start = list(dict.fromkeys(failed_m[lo:hi].tolist()))  # distinct, in order
            done, ok = self._complete(start, rng)
            new_units = [done]
            if not ok and len(start) > 1:  # dissolve: each member not yet covered starts anew
                new_units, covered = [], set()
                for x in start:
                    if x not in covered:
                        done, _ = self._complete([x], rng)
                        covered.update(done)
                        new_units.append(done)
            for done in new_units:
                kept_m.append(np.asarray(done, dtype=np.int64))
                kept_u.append(np.full(len(done), next_key, dtype=np.int64))
                next_key += 1
        return np.concatenate(kept_m), np.concatenate(kept_u)

    def _unmet(self, unit: list[int]) -> list[tuple[int, str]]:
        """The (position, need) pairs of ``unit`` (distinct samples) without a positive in it."""
        idx = np.asarray(unit)
        e, s = self._emo[idx], self._spk[idx]
        same_e, same_s = e[:, None] == e[None, :], s[:, None] == s[None, :]
        other = ~np.eye(len(unit), dtype=bool)
        out = []
        for n in self.need:
            mask = {"emotion": same_e, "speaker": same_s, "speaker_emotion": same_s & ~same_e}[n]
            missing = ~(mask & other).any(axis=1) & self._feasible[n][idx]
            out.extend((int(k), n) for k in np.flatnonzero(missing))
        return sorted(out)

    def _meets(self, need: str, emo: int, spk: int) -> np.ndarray:
        """The cells whose samples are a positive for ``need`` of a sample ``(spk, emo)``."""
        if need == "emotion":
            return self._cell_emo == emo
        if need == "speaker":
            return self._cell_spk == spk
        return (self._cell_spk == spk) & (self._cell_emo != emo)

    def _complete(self, unit: list[int], rng: np.random.Generator) -> tuple[list[int], bool]:
        """Grow ``unit`` until every member has its positives or it has ``batch_size`` members.

        Each step meets the first unmet (member, need) with a sample from the speaker-emotion cell
        that scores best: + the unmet needs of the unit it meets, - the needs of the new sample
        that the unit cannot meet, then at random. Returns the unit and whether it is complete.
        """
        cell_emo, cell_spk, sizes = self._cell_emo, self._cell_spk, self._cell_sizes
        unit = list(unit)
        while True:
            unmet = self._unmet(unit)
            if not unmet or len(unit) >= self.batch_size:
                return unit, not unmet
            idx = np.asarray(unit)
            u_emo, u_spk = self._emo[idx], self._spk[idx]
            in_unit = np.bincount(self._cell[idx], minlength=len(sizes))
            # candidate cells meet the first unmet need and hold a sample not in the unit
            k0, n0 = unmet[0]
            ok = self._meets(n0, u_emo[k0], u_spk[k0]) & (sizes > in_unit)
            gain = np.sum([self._meets(n, u_emo[k], u_spk[k]) for k, n in unmet], axis=0)
            spk_emo = np.zeros((self._n_spk, self._n_emo), dtype=bool)
            spk_emo[u_spk, u_emo] = True
            cost = np.zeros(len(sizes))
            for n in self.need:
                if n == "emotion":
                    met = spk_emo.any(axis=0)[cell_emo]
                elif n == "speaker":
                    met = spk_emo.any(axis=1)[cell_spk]
                else:  # the unit has a sample of this speaker with another emotion
                    met = (spk_emo.sum(axis=1)[cell_spk] - spk_emo[cell_spk, cell_emo]) > 0
                cost += self._cell_feasible[n] & ~met
            score = (gain - cost) * 4.0 + rng.random(len(sizes))
            score[~ok] = -np.inf
            cell = int(np.argmax(score))
            members = self._by_cell[self._cell_start[cell] : self._cell_start[cell] + sizes[cell]]
            rest = members[~np.isin(members, idx)]
            unit.append(int(rest[rng.integers(len(rest))]))

    def _pack(self, members: np.ndarray, sizes: np.ndarray) -> list[list[int]]:
        """Pack consecutive units (``sizes`` members each) greedily into batches."""
        ends = np.cumsum(sizes)
        total = int(ends[-1])
        cuts = [0]
        while cuts[-1] < total:
            first = int(np.searchsorted(ends, cuts[-1], side="right"))  # the next unit
            last = int(np.searchsorted(ends, cuts[-1] + self.batch_size, side="right")) - 1
            cuts.append(int(ends[max(first, last)]))  # the units that fit, at least one
        if len(cuts) > 2 and cuts[-1] - cuts[-2] == 1:
            del cuts[-2]  # a final batch of one joins the previous batch
        flat = members.tolist()
        return [flat[lo:hi] for lo, hi in zip(cuts[:-1], cuts[1:])]
