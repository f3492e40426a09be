"""The label-budget experiment: does cluster pretraining help when emotion labels are scarce?

For each fold and labelled fraction f (``train_run`` keeps an emotion-stratified, seeded share f
of the training part's labels), three conditions (:data:`CONDITIONS`):

- ``"none"``: EMO-only on the labelled share, from scratch;
- ``"cluster"``: the emotion path pretrained on the whole training part (labelled + unlabelled,
  labels hidden; :mod:`hcld_lib.training.pretrain`), then EMO-only fine-tuning on the share;
- ``"cluster+hcld"``: the same pretrained path, fine-tuned with the full HCLD objective.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.io import HcldError, atomic_write_text, short_hash
from hcld_lib.training.config import RunConfig
from hcld_lib.training.pretrain import fold_pseudo_labels, history_file, pretrain_emotion_encoder
from hcld_lib.training.run import train_run

CONDITIONS: tuple[str, ...] = ("none", "cluster", "cluster+hcld")
"""The label-budget conditions: no pretraining, cluster pretraining, cluster pretraining + HCLD."""

CONDITION_VARIANT: dict[str, str] = {"none": "emo_only", "cluster": "emo_only",
                                     "cluster+hcld": "hcld"}

CONDITION_LABELS: dict[str, str] = {
    "none": "no pretraining (EMO-only)",
    "cluster": "cluster pretraining + EMO-only",
    "cluster+hcld": "cluster pretraining + HCLD",
}


def _pretrain_tag(config: RunConfig, embeddings: np.ndarray, k: int | None, epochs: int,
                  speaker_ce: bool, other_speakers_negative: bool) -> str:
    """A short hash of everything that makes a pretrained encoder (its file name)."""
    fields = {f: getattr(config, f) for f in (
        "features", "emotion_arch", "branches", "embed_dim", "hidden_dim", "n_layers", "n_heads",
        "dropout",
        "protocol", "n_folds", "fold", "val_fraction", "seed", "frame_stride", "max_frames",
        "batch_size", "lr", "warmup_epochs", "weight_decay", "temperature")}
    fields.update(k=k, epochs=epochs, speaker_ce=speaker_ce,
                  other_speakers_negative=other_speakers_negative,
                  embeddings=hashlib.sha1(np.ascontiguousarray(embeddings).tobytes()).hexdigest())
    return short_hash(fields)


def label_budget_experiment(
    base: RunConfig,
    speaker_embeddings: tuple[np.ndarray, Sequence[str]],
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    folds: int | Sequence[int] = 2,
    out_dir: str | os.PathLike | None = None,
    conditions: Sequence[str] = CONDITIONS,
    *,
    k: int | None = None,
    pretrain_epochs: int | None = None,
    speaker_ce: bool = False,
    other_speakers_negative: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """No pretraining vs cluster pretraining vs cluster pretraining + HCLD, per labelled fraction.

    Args:
        base: shared settings (features, architecture, widths, epochs, protocol, seed, ...);
            the variant's switches are set per condition (:data:`CONDITION_VARIANT`).
        speaker_embeddings: ``(embeddings [M, D], ids [M])`` of a pretrained speaker encoder,
            covering the cache's table.
        fractions: labelled shares of each fold's training part.
        folds: how many folds (the first ``folds``) or explicit fold indices.
        out_dir: runs go to ``out_dir/<run_name>/``, pretrained encoders to
            ``out_dir/pretrained/``, the results to ``out_dir/label_budget.csv`` (atomically, after
            every run). ``None`` = ``<base.out_dir>/label_budget``.
        conditions: a subset of :data:`CONDITIONS`.
        k: clusters per speaker (``None`` = number of emotion classes).
        pretrain_epochs: ``None`` = ``base.epochs``.
        speaker_ce, other_speakers_negative: pretraining switches
            (:func:`pretrain_emotion_encoder`).
        progress: print one line per run.

    Returns:
        One row per (condition, fraction, fold): ``condition, variant, train_fraction, fold,
        n_train`` (labelled utterances), ``emo_wa, emo_ua, emo_f1`` (test, fractions in [0, 1]),
        ``val_emo_ua, selected_epoch, pretrained`` (the encoder file or ""), ``run_name``.
        Resumable: finished runs are skipped by ``train_run`` and pretrained encoders are reused.
    """
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise HcldError(f"unknown condition(s) {bad}; choose from {CONDITIONS}")
    bad_f = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad_f:
        raise HcldError(f"fractions {bad_f} must be in (0, 1]")
    fold_list = list(range(folds)) if isinstance(folds, int) else [int(f) for f in folds]
    if any(not 0 <= f < base.n_folds for f in fold_list):
        raise HcldError(f"folds {fold_list} outside 0..{base.n_folds - 1} (n_folds={base.n_folds})")
    out_dir = Path(out_dir) if out_dir is not None else Path(base.out_dir) / "label_budget"
    emb, ids = speaker_embeddings
    emb = np.asarray(emb)
    pre_epochs = base.epochs if pretrain_epochs is None else int(pretrain_epochs)
    arch = base.emotion_arch
    results_path = out_dir / "label_budget.csv"

    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    total = len(fold_list) * len(fractions) * len(conditions)
    for fold in fold_list:
        encoder_path = ""
        if any(c != "none" for c in conditions):
            fold_cfg = base.replace(variant="emo_only", fold=fold, out_dir=str(out_dir),
                                    run_name=None)
            tag = _pretrain_tag(fold_cfg, emb, k, pre_epochs, speaker_ce, other_speakers_negative)
            enc_file = out_dir / "pretrained" / (
                f"cluster__{arch}__{base.protocol}-fold{fold}__seed{base.seed}__{tag}.pt")
            if not (enc_file.is_file() and history_file(enc_file).is_file()):
                pseudo = fold_pseudo_labels(fold_cfg, emb, ids, k=k)
                t0 = time.perf_counter()
                pretrain_emotion_encoder(fold_cfg, pseudo, enc_file, pre_epochs, speaker_ce,
                                         other_speakers_negative=other_speakers_negative)
                if progress:
                    print(f"[label budget] pretrained fold {fold} encoder "
                          f"({time.perf_counter() - t0:.1f} s) -> {enc_file.name}", flush=True)
            encoder_path = str(enc_file)
            tag_name = f"__pre-cluster-{tag}"
        for fraction in fractions:
            for condition in conditions:
                variant = CONDITION_VARIANT[condition]
                overrides: dict[str, Any] = {"train_fraction": float(fraction)}
                cfg = base.replace(variant=variant, fold=fold, out_dir=str(out_dir),
                                   run_name=None, **overrides)
                if condition != "none":
                    cfg = cfg.replace(init_emotion_encoder=encoder_path,
                                      run_name=cfg.resolved_run_name + tag_name)
                done = (out_dir / cfg.resolved_run_name / "metrics.json").is_file()
                t0 = time.perf_counter()
                metrics = train_run(cfg)
                emo = metrics["test"]["emotion"]
                rows.append({
                    "condition": condition, "variant": variant,
                    "train_fraction": float(fraction), "fold": int(fold),
                    "n_train": int(metrics.get("n_train", -1)),
                    "emo_wa": float(emo["wa"]), "emo_ua": float(emo["ua"]),
                    "emo_f1": float(emo["f1"]),
                    "val_emo_ua": float(metrics["val"]["emotion"]["ua"])
                    if metrics.get("val") and metrics["val"].get("emotion") else math.nan,
                    "selected_epoch": metrics.get("selected_epoch"),
                    "pretrained": encoder_path if condition != "none" else "",
                    "run_name": cfg.resolved_run_name,
                })
                atomic_write_text(results_path, pd.DataFrame(rows).to_csv(index=False))
                if progress:
                    status = "cached" if done else f"{time.perf_counter() - t0:5.1f} s"
                    print(f"[label budget {len(rows):>3}/{total}] {condition:<13} "
                          f"f={fraction:<5g} fold {fold}  {status}  "
                          f"emo UA {100 * emo['ua']:5.1f}  "
                          f"({time.perf_counter() - t_start:.0f} s so far)", flush=True)
    return pd.DataFrame(rows)


def summarize_label_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds (ddof=1; NaN for one fold) per condition x fraction.

    Columns: ``condition, train_fraction, n_folds_run, n_train_mean``, and ``<m>_mean``,
    ``<m>_std`` for m in (``wa``, ``ua``, ``f1``) (test emotion, fractions in [0, 1]).
    """
    if df.empty:
        raise HcldError("no label-budget runs to summarise; run label_budget_experiment first")
    metrics = {"emo_wa": "wa", "emo_ua": "ua", "emo_f1": "f1"}
    order = {c: i for i, c in enumerate(CONDITIONS)}
    g = df.groupby(["condition", "train_fraction"], sort=False)
    out = g[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{metrics[m]}_{s}" for m, s in out.columns]
    out["n_folds_run"] = g.size()
    out["n_train_mean"] = g["n_train"].mean()
    out = out.reset_index()
    out = out.sort_values(["condition", "train_fraction"],
                          key=lambda s: s.map(order) if s.name == "condition" else s)
    cols = ["condition", "train_fraction", "n_folds_run", "n_train_mean",
            "wa_mean", "wa_std", "ua_mean", "ua_std", "f1_mean", "f1_std"]
    return out[cols].reset_index(drop=True)


def label_budget_sentences(summary: pd.DataFrame) -> list[str]:
    """One sentence per pretrained condition and labelled fraction: its emotion-UA gain over no
    pretraining at that fraction, and a word for it.

    ``"helps"`` / ``"hurts"`` when the gain is larger than the spread over folds (the larger of the
    two conditions' stds), ``"inconclusive"`` otherwise or when the spread is unknown (one fold).

    Args: summary: the output of :func:`summarize_label_budget`.
    """
    none = summary[summary["condition"] == "none"].set_index("train_fraction")
    lines = []
    for cond in [c for c in summary["condition"].unique() if c != "none"]:
        sub = summary[summary["condition"] == cond].set_index("train_fraction")
        for f in sub.index:
            if f not in none.index:
                continue
            gain = 100 * (sub.loc[f, "ua_mean"] - none.loc[f, "ua_mean"])
            spread = 100 * max(sub.loc[f, "ua_std"], none.loc[f, "ua_std"])
            word = ("inconclusive" if spread != spread or abs(gain) <= spread else
                    "helps" if gain > 0 else "hurts")
            lines.append(f"- {CONDITION_LABELS.get(cond, cond)}, {100 * f:g}% labels: "
                         f"{gain:+.1f} UA points vs no pretraining (fold spread {spread:.1f}): "
                         f"**{word}**.")
    return lines


def label_budget_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as a readable table: rows = labelled fraction, columns = conditions, cells
    ``"UA ± std"`` in percent."""
    def cell(r: pd.Series) -> str:
        std = "" if pd.isna(r["ua_std"]) else f" ± {100 * r['ua_std']:.1f}"
        return f"{100 * r['ua_mean']:.1f}{std}"

    frame = summary.assign(cell=summary.apply(cell, axis=1),
                           labelled=(100 * summary["train_fraction"]).map(lambda v: f"{v:g}%"))
    table = frame.pivot(index="labelled", columns="condition", values="cell")
    present = [c for c in CONDITIONS if c in table.columns]
    order = sorted(frame["labelled"].unique(), key=lambda s: float(s.rstrip("%")))
    return table.loc[order, present]


def label_budget_notes(base: RunConfig, speaker_encoder: str, k: int | None,
                       pretrain_epochs: int | None, speaker_ce: bool,
                       other_speakers_negative: bool, conditions: Sequence[str]) -> list[str]:
    """The notes under the label-budget table: what each number is and how it was made."""
    return [
        "Test emotion WA / UA / F1 as fractions; mean and std over folds (std blank for one fold).",
        f"Pseudo-labels: per-speaker k-means (k = {k or 'number of emotions'}) of "
        f"{speaker_encoder} embeddings of each fold's whole training part; pretraining never "
        "reads an emotion label.",
        f"Pretraining: {pretrain_epochs or base.epochs} epochs, temperature {base.temperature}, "
        f"other speakers as negatives: {other_speakers_negative}, speaker CE: {speaker_ce}. "
        f"Fine-tuning: {base.epochs} epochs, arch {base.emotion_arch}; the labelled share is "
        "emotion-stratified and seeded (train_run).",
        "Conditions: " + "; ".join(f"{c} = {CONDITION_LABELS[c]}" for c in conditions) + ".",
    ]
