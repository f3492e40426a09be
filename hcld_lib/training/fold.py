"""A run's fold: the cache's rows of each part, the labels as integers, the label budget, and
the normaliser fitted on the labelled training rows (:func:`prepare_fold`).

A process prepares each fold once: the runs of a grid that share a fold (its variants,
architectures and readings) reuse it, and the cache's rows are checked against their CRCs once
per process before any of them is used.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hcld_lib.data.labels import emotion_order
from hcld_lib.data.splits import Fold, make_folds
from hcld_lib.features.cache import FeatureCache, open_cache
from hcld_lib.features.normalizer import FeatureNormalizer
from hcld_lib.features.resident import FoldFeatures, fold_features
from hcld_lib.io import HcldError
from hcld_lib.training.config import RunConfig

_VERIFIED: set[tuple] = set()  # caches whose rows this process checked against their CRCs


def fold_split(config: RunConfig) -> tuple[FeatureCache, pd.DataFrame, Fold, np.ndarray]:
    """The cache, its utterance table, the config's fold, and each table row's cache row."""
    if not config.features:
        raise HcldError("RunConfig.features is empty: set it to the folder of a feature cache "
                        "(hcld_lib.features.extract.extract_features, or Experiment.config() "
                        "in a notebook, makes one)")
    cache = open_cache(config.features)
    stamp = (str(cache.path), cache.meta.get("key"),
             (cache.path / "features.npy").stat().st_mtime_ns)
    if stamp not in _VERIFIED:  # every row once per process: 0.05 s per 1000 fbank rows
        cache.verify()
        _VERIFIED.add(stamp)
    table = cache.table.reset_index(drop=True)
    folds = make_folds(table, config.protocol, config.n_folds, config.seed, config.val_fraction)
    if not 0 <= config.fold < len(folds):
        raise HcldError(f"fold={config.fold} but protocol {config.protocol!r} gives "
                        f"{len(folds)} folds (0..{len(folds) - 1})")
    id_to_row = {uid: i for i, uid in enumerate(cache.ids)}
    try:
        cache_row = np.array([id_to_row[u] for u in table["utterance_id"]], dtype=np.int64)
    except KeyError as err:
        raise HcldError(f"utterance {err} of the cache's table has no features in "
                        f"{config.features}; re-extract the cache") from err
    return cache, table, folds[config.fold], cache_row


def label_budget_subset(
    rows: np.ndarray, emotion: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A seeded, emotion-stratified subset of ``rows`` holding ``fraction`` of each class.

    Each class keeps ``max(1, round(fraction * n_class))`` rows, so no class disappears.
    ``emotion`` is aligned with ``rows``. Returns sorted row indices (``rows`` itself when
    ``fraction >= 1``): the labelled part of a label-budget run; the rest of ``rows`` is the
    unlabelled part.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if fraction >= 1.0:
        return rows
    rng = np.random.default_rng([seed, 6])
    emotion = np.asarray(emotion)
    keep = []
    for e in np.unique(emotion):
        members = rows[emotion == e]
        k = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


@dataclass
class FoldData:
    """A run's view of its fold: labels as integers over the table's rows, the labelled
    training rows, the fitted normaliser, and the datasets of every part."""

    config: RunConfig
    cache: FeatureCache
    table: pd.DataFrame
    fold: Fold
    cache_row: np.ndarray
    emotion_labels: list[str]
    speaker_labels: list[str]
    emotion: np.ndarray
    """[N] emotion index of every table row."""
    speaker: np.ndarray
    """[N] speaker index of every table row; -1 for a speaker unseen in training."""
    train: np.ndarray
    """The training rows whose labels are used (all of ``fold.train`` unless a label budget)."""
    normalizer: FeatureNormalizer

    def features(self, device: torch.device | str = "cpu") -> FoldFeatures:
        """Every table row's normalised, pooled features (position = table row), resident on
        ``device`` when they fit (:mod:`hcld_lib.features.resident`)."""
        c = self.config
        return fold_features(self.cache, self.cache_row, self.normalizer, c.frame_stride,
                             c.max_frames, device, c.resident)

    def split_rows(self, name: str) -> np.ndarray:
        return getattr(self.fold, name)


_PREPARED: OrderedDict[tuple, FoldData] = OrderedDict()
_KEEP = 16  # prepared folds a process keeps (a few MB of labels and statistics each)


def prepare_fold(config: RunConfig) -> FoldData:
    """The fold of ``config`` with its label budget applied and its normaliser fitted on the
    labelled training rows; the same fold asked for again by this process (another variant,
    architecture or reading of a grid) is not prepared again."""
    meta = Path(config.features) / "meta.json"
    written = meta.stat().st_mtime_ns if config.features and meta.is_file() else None
    key = (config.features, written, config.protocol, config.n_folds, config.fold, config.seed,
           config.val_fraction, config.train_fraction)
    if key in _PREPARED:
        _PREPARED.move_to_end(key)
        return dataclasses.replace(_PREPARED[key], config=config)
    data = _prepare_fold(config)
    _PREPARED[key] = data
    while len(_PREPARED) > _KEEP:
        _PREPARED.popitem(last=False)
    return data


def _prepare_fold(config: RunConfig) -> FoldData:
    cache, table, fold, cache_row = fold_split(config)
    emotion_labels = emotion_order(table["emotion"])
    emo_index = {e: i for i, e in enumerate(emotion_labels)}
    emotion = table["emotion"].astype(str).map(emo_index).to_numpy(np.int64)
    train = label_budget_subset(fold.train, emotion[fold.train], config.train_fraction,
                                config.seed)
    speakers = table["speaker"].astype(str).to_numpy()
    speaker_labels = sorted(set(speakers[train]))
    spk_index = {s: i for i, s in enumerate(speaker_labels)}
    speaker = np.array([spk_index.get(s, -1) for s in speakers], dtype=np.int64)
    normalizer = FeatureNormalizer().fit(cache, cache_row[train])
    return FoldData(config, cache, table, fold, cache_row, emotion_labels, speaker_labels,
                    emotion, speaker, train, normalizer)
