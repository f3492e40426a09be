"""Time to build one epoch of batches with ``ContrastiveBatchSampler``: the vectorised sampler
against the previous, per-unit greedy one (its epoch building kept below as
``_OldSampler``), in one run.

Run: ``.venv/bin/python bench/bench_sampler.py [--epochs 20]``

For IEMOCAP-like labels (10 speakers of uneven size, 4 emotions in IEMOCAP's proportions
neutral 1708 : happy+excited 1636 : angry 1103 : sad 1084, the mix varying per speaker) of 800 and
4400 samples (4400 = the paper's training part), batch size 32 and the need sets
``("emotion", "speaker_emotion")`` and ``("emotion", "speaker", "speaker_emotion")``, prints the
milliseconds per epoch (median over ``--epochs`` different epochs, each built from scratch) of the
new and of the old sampler, the speed-up (goal: at least 5x), and the epoch length / data length
ratio of each (the replicas; mean over the epochs).
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np

from hcld_lib.method.sampler import ContrastiveBatchSampler

SIZES = (800, 4400)
NEED_SETS = (("emotion", "speaker_emotion"), ("emotion", "speaker", "speaker_emotion"))
BATCH_SIZE = 32


def iemocap_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Emotion and speaker labels of ``n`` utterances: 10 speakers, 4 emotions, uneven counts."""
    rng = np.random.default_rng(seed)
    overall = np.array([1708, 1636, 1103, 1084]) / 5531
    speaker = rng.choice(10, n, p=rng.dirichlet(np.full(10, 20.0)))
    mix = rng.dirichlet(30 * overall, size=10)  # per-speaker emotion proportions
    emotion = np.empty(n, dtype=np.int64)
    for s in range(10):
        rows = np.flatnonzero(speaker == s)
        emotion[rows] = rng.choice(4, len(rows), p=mix[s])
    return emotion, speaker


def per_epoch(sampler: Any, epochs: int) -> tuple[float, float]:
    """Median milliseconds to build an epoch, and the mean epoch length / data length."""
    times, lengths = [], []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        batches = sampler.batches(epoch)  # a new epoch each time: never from the cache
        times.append(time.perf_counter() - t0)
        lengths.append(sum(len(b) for b in batches))
    return 1000 * float(np.median(times)), float(np.mean(lengths)) / sampler.n


def main(epochs: int) -> None:
    print(f"ContrastiveBatchSampler: ms to build one epoch (median of {epochs}), batch "
          f"{BATCH_SIZE}, 10 speakers x 4 emotions (IEMOCAP-like)")
    print(f"{'N':>5s}  {'need':<36s} {'new ms':>8s} {'old ms':>8s} {'speed-up':>9s} "
          f"{'len/N new':>10s} {'len/N old':>10s}")
    for n in SIZES:
        emotion, speaker = iemocap_like(n)
        for need in NEED_SETS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = ContrastiveBatchSampler(emotion, speaker, BATCH_SIZE, seed=0, need=need)
                old = _OldSampler(emotion, speaker, BATCH_SIZE, seed=0, need=need)
            new_ms, new_ratio = per_epoch(new, epochs)
            old_ms, old_ratio = per_epoch(old, epochs)
            print(f"{n:5d}  {'+'.join(need):<36s} {new_ms:8.2f} {old_ms:8.1f} "
                  f"{old_ms / new_ms:8.1f}x {new_ratio:10.4f} {old_ratio:10.4f}")


class _OldSampler(ContrastiveBatchSampler):
    """The sampler before vectorisation, for comparison: the same arguments, checks and
    feasibility tables (inherited), and its own per-unit greedy epoch building (the methods
    below, copied verbatim)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # members of each speaker-emotion cell, as index arrays (what the old draw reads)
        bounds = np.r_[self._cell_start, self.n]
        self._cell_members = [self._by_cell[bounds[c] : bounds[c + 1]]
                              for c in range(len(self._cell_sizes))]

    # --- building an epoch ----------------------------------------------------------------------
    def _build_epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        if not self.need:
            units: list[list[int]] = [[int(i)] for i in order]
        else:
            units = self._build_units(order, rng)
        return self._pack(units)

    def _build_units(self, order: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
        placed = np.zeros(self.n, dtype=bool)
        unplaced_in_cell = self._cell_sizes.copy()
        # per-cell queues of members in a random order; a pointer skips placed members for good
        queues: dict[int, list[Any]] = {}

        def draw(cell: int, unit: list[int]) -> int:
            """A member of ``cell`` not in ``unit``: an unplaced one first, else a replica."""
            if cell not in queues:
                queues[cell] = [rng.permutation(self._cell_members[cell]), 0]
            q = queues[cell]
            members, ptr = q
            while ptr < len(members) and placed[members[ptr]]:
                ptr += 1
            q[1] = ptr
            for k in range(ptr, min(ptr + len(unit) + 16, len(members))):
                j = int(members[k])
                if not placed[j] and j not in unit:
                    return j
            rest = np.setdiff1d(members, np.asarray(unit))
            return int(rest[rng.integers(len(rest))])

        units = []
        for a in order:
            if placed[a]:
                continue
            unit = self._complete_unit(int(a), draw, unplaced_in_cell, rng)
            new = np.unique(np.asarray(unit)[~placed[unit]])
            placed[new] = True
            np.subtract.at(unplaced_in_cell, self._cell[new], 1)
            units.append(unit)
        return units

    def _unmet(self, unit: list[int]) -> list[tuple[int, str]]:
        """The (position, need) pairs of ``unit`` without a positive inside the unit."""
        emo = [int(self._emo[m]) for m in unit]
        spk = [int(self._spk[m]) for m in unit]
        out = []
        for k, m in enumerate(unit):
            for n in self.need:
                if not self._feasible[n][m]:
                    continue
                if n == "emotion":
                    ok = any(emo[j] == emo[k] for j in range(len(unit)) if j != k)
                elif n == "speaker":
                    ok = any(spk[j] == spk[k] for j in range(len(unit)) if j != k)
                else:
                    ok = any(spk[j] == spk[k] and emo[j] != emo[k] for j in range(len(unit)))
                if not ok:
                    out.append((k, n))
        return out

    def _complete_unit(
        self, anchor: int, draw: Any, unplaced_in_cell: np.ndarray, rng: np.random.Generator
    ) -> list[int]:
        """Grow a unit from ``anchor`` until every member has its positives (or it is full).

        Each step meets the first unmet (member, need) with a sample from the speaker-emotion cell
        that scores best: + the unmet needs of the unit it meets, - the needs of the new sample
        that the unit cannot meet, then cells that still have unplaced samples, then at random.
        Vectorised over cells, so a step costs O(cells x unit size).
        """
        n_emo = self._n_emo
        cell_emo = np.arange(len(unplaced_in_cell)) % n_emo
        cell_spk = np.arange(len(unplaced_in_cell)) // n_emo
        sizes = self._cell_sizes
        unit = [anchor]
        while len(unit) < self.batch_size:
            unmet = self._unmet(unit)
            if not unmet:
                break
            idx = np.asarray(unit)
            u_emo, u_spk = self._emo[idx], self._spk[idx]
            in_unit = np.bincount(self._cell[idx], minlength=len(sizes))
            # candidate cells: they must meet the first unmet need and hold a sample not in unit
            k0, n0 = unmet[0]
            target = {
                "emotion": cell_emo == u_emo[k0],
                "speaker": cell_spk == u_spk[k0],
                "speaker_emotion": (cell_spk == u_spk[k0]) & (cell_emo != u_emo[k0]),
            }[n0]
            ok = target & (sizes > in_unit)
            # how many unmet needs of the unit a sample of each cell would meet
            gain = np.zeros(len(sizes))
            for k, n in unmet:
                if n == "emotion":
                    gain += cell_emo == u_emo[k]
                elif n == "speaker":
                    gain += cell_spk == u_spk[k]
                else:
                    gain += (cell_spk == u_spk[k]) & (cell_emo != u_emo[k])
            # how many needs of the new sample the unit would leave unmet
            spk_has = np.zeros(self._n_spk, dtype=bool)
            spk_has[u_spk] = True
            emo_has = np.zeros(n_emo, dtype=bool)
            emo_has[u_emo] = True
            spk_emo = np.zeros((self._n_spk, n_emo), dtype=bool)
            spk_emo[u_spk, u_emo] = True
            cost = np.zeros(len(sizes))
            for n in self.need:
                feasible = self._cell_feasible[n]
                if n == "emotion":
                    met = emo_has[cell_emo]
                elif n == "speaker":
                    met = spk_has[cell_spk]
                else:  # the unit has a sample of this speaker with another emotion
                    met = (spk_emo[cell_spk].sum(axis=1) - spk_emo[cell_spk, cell_emo]) > 0
                cost += feasible & ~met
            score = (gain - cost) * 4.0 + 2.0 * (unplaced_in_cell > 0) + rng.random(len(sizes))
            score[~ok] = -np.inf
            cell = int(np.argmax(score))
            unit.append(draw(cell, unit))
        return unit

    def _pack(self, units: list[list[int]]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        for unit in units:
            if current and len(current) + len(unit) > self.batch_size:
                batches.append(current)
                current = []
            current = current + unit
        if current:
            if len(current) == 1 and batches:
                batches[-1] = batches[-1] + current
            else:
                batches.append(current)
        return batches


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs timed per configuration")
    main(parser.parse_args().epochs)
