"""Utterance tables: IEMOCAP, any corpus by manifest, and the embedded synthetic corpus.

Every loader returns the same table (:mod:`hcld_lib.data.labels`); :func:`load_corpus` is the
single entry point. Modules, in the order of the data flow:

- :mod:`~hcld_lib.data.labels`: the table's columns and the emotion classes;
- :mod:`~hcld_lib.data.iemocap`, :mod:`~hcld_lib.data.manifest`: the two corpora users bring;
- :mod:`~hcld_lib.data.voice`, :mod:`~hcld_lib.data.synthetic`: the embedded synthetic corpus
  (a source-filter voice; the corpus written from it, ``synthetic.synthesize_corpus``);
- :mod:`~hcld_lib.data.audio`: one waveform per utterance (what feature extraction reads);
- :mod:`~hcld_lib.data.splits`: the evaluation protocols (paper / loso folds).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hcld_lib.data.iemocap import load_iemocap
from hcld_lib.data.labels import EMOTIONS, TABLE_COLUMNS, emotion_order
from hcld_lib.data.manifest import load_manifest
from hcld_lib.io import HcldError, short_hash

DATASETS: tuple[str, ...] = ("synthetic", "iemocap", "manifest")


def default_synthetic_dir(seed: int = 0, n_utterances: int = 1000, **synth_kwargs: Any) -> Path:
    """Where :func:`load_corpus` keeps a synthetic corpus when no folder is given.

    ``$HCLD_DATA_DIR`` (default ``./data``) / ``synthetic_n<N>_seed<S>[_<hash of other knobs>]``.
    """
    name = f"synthetic_n{int(n_utterances)}_seed{int(seed)}"
    if synth_kwargs:
        name += "_" + short_hash(synth_kwargs)
    return Path(os.environ.get("HCLD_DATA_DIR", "data")) / name


def load_corpus(
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    synthetic_dir: str | os.PathLike | None = None,
    seed: int = 0,
    n_utterances: int = 1000,
    label_map: Mapping[str, str | None] | None = None,
    **synth_kwargs: Any,
) -> pd.DataFrame:
    """The notebooks' single entry point to an utterance table.

    Args:
        dataset: ``"synthetic"`` (the embedded default: made in ``synthetic_dir`` if not there
            yet, see :func:`synthesize_corpus`), ``"iemocap"`` (``root`` = your release) or
            ``"manifest"`` (``manifest`` = your CSV).
        root: IEMOCAP folder (``dataset="iemocap"``).
        manifest: manifest CSV (``dataset="manifest"``); ``label_map`` renames/drops labels.
        synthetic_dir: folder of the synthetic corpus; default :func:`default_synthetic_dir`.
        seed, n_utterances, **synth_kwargs: passed to :func:`synthesize_corpus`
            (``emotion_strength``, ``confounding``, ...).

    Warns when the table lacks one of the four emotions (neu, hap, ang, sad), naming the ones it
    has, before anything is trained on it (the synthetic corpus is read back through its
    manifest, which warns so).
    """
    if dataset not in DATASETS:
        raise HcldError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset != "synthetic" and synth_kwargs:
        raise HcldError(
            f"{', '.join(sorted(synth_kwargs))} only apply to dataset='synthetic', not {dataset!r}"
        )
    if dataset == "iemocap":
        if root is None:
            raise HcldError("dataset='iemocap' needs root=<folder of your IEMOCAP release>")
        return load_iemocap(root)
    if dataset == "manifest":
        if manifest is None:
            raise HcldError("dataset='manifest' needs manifest=<path of your CSV>")
        return load_manifest(manifest, label_map=label_map)
    # imported here: the synthetic corpus pulls in scipy.signal (a second and a half), which
    # training processes, importing this package for its labels and splits, do without
    from hcld_lib.data.synthetic import synthesize_corpus

    if synthetic_dir is None:
        synthetic_dir = default_synthetic_dir(seed, n_utterances, **synth_kwargs)
    return synthesize_corpus(synthetic_dir, n_utterances=n_utterances, seed=seed, **synth_kwargs)


__all__ = [
    "DATASETS",
    "EMOTIONS",
    "TABLE_COLUMNS",
    "default_synthetic_dir",
    "emotion_order",
    "load_corpus",
    "load_iemocap",
    "load_manifest",
]
