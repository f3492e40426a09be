"""Reading what training runs saved: one reader of a run's test embeddings, and speaker spaces.

A finished run folder holds ``metrics.json`` (the run's settings under ``config`` and its
metrics) and ``embeddings.npz``: the fold's test part as ``x_e`` ``[N, E]``, ``x_s`` ``[N, E]``
(absent for a run without a speaker branch, EMO-only), ``emotion``, ``speaker``,
``utterance_id`` ``[N]`` (strings) and ``emotion_pred`` ``[N]`` (the predicted emotion). Under
``loso`` the speaker-test part follows with the prefix ``spk_``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.io import HcldError, load_npz, read_json

EmbeddingSource = str | os.PathLike | Mapping[str, Any]
"""A run folder, its ``embeddings.npz``, or a dict with the same keys."""


@dataclass
class RunEmbeddings:
    """The test-part embeddings a run saved (see the module docstring for the arrays)."""

    x_e: np.ndarray
    x_s: np.ndarray | None
    emotion: np.ndarray
    speaker: np.ndarray
    utterance_id: np.ndarray | None = None
    emotion_pred: np.ndarray | None = None
    run_dir: Path | None = None
    config: dict = field(default_factory=dict)


def load_run_embeddings(
    source: EmbeddingSource, *, require_x_s: bool = False, require_ids: bool = False
) -> RunEmbeddings:
    """Read a run's test embeddings from a run folder, its ``embeddings.npz``, or a dict.

    Raises :class:`HcldError` naming the file when it is missing or lacks ``x_e``, ``emotion``
    or ``speaker``; with ``require_x_s`` when the run has no speaker branch (EMO-only); with
    ``require_ids`` when it has no ``utterance_id``.
    """
    run_dir = None
    config: dict = {}
    if isinstance(source, Mapping):
        data = {k: np.asarray(v) for k, v in source.items() if v is not None}
        where = "the embeddings dict"
    else:
        path = Path(source)
        if path.is_dir():
            path = path / "embeddings.npz"
        if not path.is_file():
            raise HcldError(f"{path} does not exist; train the run first (train_run)")
        remedy = f"delete the run folder {path.parent} and train the run again"
        data = load_npz(path, what="run embeddings", remedy=remedy)
        where, run_dir = str(path), path.parent
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            read = read_json(metrics, what="run metrics", remedy=remedy)
            config = read.get("config", {}) if isinstance(read, dict) else {}
    missing = [k for k in ("x_e", "emotion", "speaker") if k not in data]
    if missing:
        raise HcldError(f"{where} lacks {missing}; expected keys x_e, [x_s], emotion, speaker")
    x_s = data.get("x_s")
    if x_s is not None and x_s.size == 0:
        x_s = None
    if require_x_s and x_s is None:
        raise HcldError(f"{where} has no x_s: the run has no speaker branch (EMO-only); "
                        "choose a variant with one")
    if require_ids and "utterance_id" not in data:
        raise HcldError(f"{where} has no 'utterance_id' array (has {sorted(data)}); re-run it")
    ids = data.get("utterance_id")
    pred = data.get("emotion_pred")
    return RunEmbeddings(
        x_e=data["x_e"], x_s=x_s, emotion=data["emotion"].astype(str),
        speaker=data["speaker"].astype(str),
        utterance_id=None if ids is None else ids.astype(str),
        emotion_pred=None if pred is None else pred.astype(str),
        run_dir=run_dir, config=config,
    )


def speaker_space_sets(
    runs: pd.DataFrame | None,
    table: pd.DataFrame,
    embeddings: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    encoder_name: str = "resemblyzer",
) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Evaluation sets of every speaker space, on the same utterances, for the clustering analysis.

    Args:
        runs: finished runs (``run_dir``, ``variant``, ``fold``, ``seed``; e.g.
            ``Experiment.finished``), each giving its test part's X_s; ``None``: no run.
        table: the utterance table (speaker and emotion of the pretrained encoder's rows).
        embeddings, ids: a pretrained speaker encoder's ``[M, D]`` embeddings and their ids
            (``features.speaker_encoders.speaker_embeddings``); ``None`` leaves that source out.
        encoder_name: the name of that source.

    Returns:
        ``{source: [(x [n, D], speaker [n], emotion [n]), ...]}`` with sources ``encoder_name``
        (restricted to each fold's test utterances, so it is scored on exactly the utterances the
        X_s are; all utterances when there is no run) and ``"X_s:<variant>"`` (one set per fold).
    """
    sources: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    if runs is None:
        runs = pd.DataFrame(columns=["run_dir", "variant", "fold", "seed"])
    runs = runs.sort_values(["variant", "fold", "seed"], kind="stable")
    loaded = {r: load_run_embeddings(r, require_x_s=True, require_ids=True)
              for r in runs["run_dir"]} if len(runs) else {}
    if embeddings is not None:
        if ids is None or len(ids) != len(embeddings):
            raise HcldError("speaker_space_sets: pass one id per embedding row")
        where = {str(u): i for i, u in enumerate(ids)}
        by_id = table.set_index(table["utterance_id"].astype(str))
        sets = []
        if loaded:
            seen: set[int] = set()
            for _, run in runs.iterrows():
                if int(run["fold"]) in seen:
                    continue
                seen.add(int(run["fold"]))
                utt = loaded[run["run_dir"]].utterance_id
                sets.append(list(utt))
        else:
            sets.append(list(table["utterance_id"].astype(str)))
        out = []
        for utt in sets:
            missing = [u for u in utt if u not in where]
            if missing:
                raise HcldError(
                    f"{len(missing)} utterances (e.g. {missing[:3]}) have no {encoder_name} "
                    "embedding; embed the table the runs were trained on"
                )
            rows = by_id.loc[utt]
            out.append((np.asarray(embeddings)[[where[u] for u in utt]],
                        rows["speaker"].astype(str).to_numpy(),
                        rows["emotion"].astype(str).to_numpy()))
        sources[encoder_name] = out
    for _, run in runs.iterrows():
        b = loaded[run["run_dir"]]
        sources.setdefault(f"X_s:{run['variant']}", []).append((b.x_s, b.speaker, b.emotion))
    if not sources:
        raise HcldError("no speaker space to analyse: no finished run and no encoder embeddings")
    return sources
