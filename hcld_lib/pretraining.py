"""Cluster-based contrastive pretraining on emotion-unlabelled speech, and the label-budget test.

SPEC §6 (Ulgen, Du, Busso, Sisman, ICASSP 2024): speaker embeddings hide emotion as
intra-speaker clusters (:mod:`hcld_lib.clustering`), so the clusters can stand in for the emotion
labels one does not have. Only the paper's abstract is available to us; every choice below is a
documented parameter.

**Pseudo-labels.** Embed the fold's training utterances with a pretrained speaker encoder
(:func:`hcld_lib.speaker_embeddings.speaker_embeddings`), run k-means within each speaker
(k = number of emotion classes by default), and label every utterance with its
(speaker, cluster) pair (:func:`fold_pseudo_labels`). No emotion label is read.

**Pairs** (:func:`cluster_pairs`), for anchor i in a batch (self always excluded):

- positives P(i) = {p != i : s_p = s_i and c_p = c_i} (same speaker, same cluster);
- negatives N(i) = {a : s_a = s_i and c_a != c_i} (the same speaker's other clusters), and with
  ``other_speakers_negative=True`` also {a : s_a != s_i} (every other speaker).

Keeping negatives within the speaker is the point: across speakers, the easiest way to tell two
utterances apart is the voice, which an emotion encoder should not learn.

**Loss** (:func:`cluster_contrastive_loss`), SupCon-style over A(i) = P(i) ∪ N(i) on
L2-normalised embeddings z (through :func:`hcld_lib.losses.masked_contrastive_loss`, the one
masked log-softmax of the package)::

    L_cluster = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)}
                log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) ),
    I = {i : |P(i)| >= 1}

optionally multi-task with speaker classification, ``L = L_cluster + w_spk CE(W z, speaker)``
(a linear head on the embedding; ``speaker_ce=True``).

**Pretraining** (:func:`pretrain_emotion_encoder`): an encoder of exactly the architecture and
sizes of ``config`` (so its state_dict loads into ``DualBranchModel.emotion_encoder``) trained on
the fold's *whole* training part (the validation and test parts are never seen), with batches
from :class:`hcld_lib.sampler.ContrastiveBatchSampler` given the pseudo-labels in place of the
emotions (every anchor has a positive and a same-speaker negative). Fine-tuning is then
``train_run(config.replace(init_emotion_encoder=path))``.

**Label budget** (:func:`label_budget_experiment`): for each fold and labelled fraction f
(``train_run`` keeps an emotion-stratified, seeded share f of the training part's labels):

- ``"none"``: EMO-only on the labelled share, from scratch;
- ``"cluster"``: the encoder pretrained on the whole training part (labelled + unlabelled,
  labels hidden), then EMO-only fine-tuning on the labelled share;
- ``"cluster+hcld"``: the same pretrained encoder, fine-tuned with the full HCLD objective.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from hcld_lib.config import RunConfig, set_seed
from hcld_lib.io import HcldError, atomic_torch_save, atomic_write_json, atomic_write_text
from hcld_lib.training import fold_data

CONDITIONS: tuple[str, ...] = ("none", "cluster", "cluster+hcld")
"""The label-budget conditions: no pretraining, cluster pretraining, cluster pretraining + HCLD."""

CONDITION_VARIANT: dict[str, str] = {"none": "emo_only", "cluster": "emo_only",
                                     "cluster+hcld": "hcld"}


# --------------------------------------------------------------------------------------------
# pairs and loss
# --------------------------------------------------------------------------------------------
def _as_long(x: Tensor | np.ndarray | Sequence[int], device: torch.device | None = None
             ) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=torch.long) if device is not None else x.long()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        _, arr = np.unique(arr, return_inverse=True)
    return torch.as_tensor(arr.astype(np.int64), device=device)


def cluster_pairs(
    speaker: Tensor | np.ndarray,
    cluster: Tensor | np.ndarray,
    other_speakers_negative: bool = False,
) -> tuple[Tensor, Tensor]:
    """Positive and contrast masks of the cluster-based loss, ``[B, B]`` bool, diagonal False.

    ``pos[i, j] = (s_i == s_j) & (c_i == c_j) & (i != j)``: same speaker, same cluster.
    ``valid[i, j] = pos[i, j] | neg[i, j]`` with ``neg[i, j] = (s_i == s_j) & (c_i != c_j)``
    (the same speaker's other clusters), or ``neg[i, j] = ~pos[i, j] & (i != j)`` when
    ``other_speakers_negative`` (other speakers count as negatives too).

    Args:
        speaker: ``[B]`` speaker labels (integers, or any labels as a numpy array).
        cluster: ``[B]`` cluster ids; a cluster id only has to be unique within its speaker
            (global pseudo-labels from :func:`hcld_lib.clustering.cluster_pseudo_labels` work too).
    Returns: ``(pos_mask, valid_mask)``.
    """
    s = _as_long(speaker)
    c = _as_long(cluster, s.device)
    if s.shape != c.shape or s.dim() != 1:
        raise HcldError(
            f"cluster_pairs: speaker {tuple(s.shape)} and cluster {tuple(c.shape)} must be 1-d "
            "and of equal length"
        )
    same_spk = s.unsqueeze(0) == s.unsqueeze(1)
    same_cl = c.unsqueeze(0) == c.unsqueeze(1)
    not_self = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    pos = same_spk & same_cl & not_self
    neg = (~pos & not_self) if other_speakers_negative else (same_spk & ~same_cl)
    return pos, pos | neg


def cluster_contrastive_loss(
    z: Tensor,
    speaker: Tensor | np.ndarray,
    cluster: Tensor | np.ndarray,
    temperature: float = 0.07,
    other_speakers_negative: bool = False,
) -> Tensor:
    """The cluster-based contrastive loss (formula in the module docstring).

    Args:
        z: ``[B, E]`` embeddings (L2-normalised inside).
        speaker: ``[B]`` speaker labels. cluster: ``[B]`` intra-speaker cluster ids.
        temperature: ``tau``.
        other_speakers_negative: also contrast against every other speaker's utterances.
    Returns: scalar tensor; 0 connected to ``z`` when no anchor has a positive.
    """
    from hcld_lib.losses import masked_contrastive_loss

    if z.dim() != 2 or z.shape[0] != len(speaker):
        raise HcldError(
            f"cluster_contrastive_loss: z must be [B, E] with B = len(speaker) = {len(speaker)}, "
            f"got {tuple(z.shape)}"
        )
    pos, valid = cluster_pairs(
        _as_long(speaker, z.device), _as_long(cluster, z.device), other_speakers_negative
    )
    return masked_contrastive_loss(z, z, pos, valid, temperature)


# --------------------------------------------------------------------------------------------
# pseudo-labels for a fold
# --------------------------------------------------------------------------------------------
def pretraining_rows(config: RunConfig) -> np.ndarray:
    """Row indices (into the cache's table) of the fold's whole training part: what pretraining
    sees (labelled and unlabelled alike; never the validation or test parts)."""
    return fold_data(config)[2].train


def fold_pseudo_labels(
    config: RunConfig,
    embeddings: np.ndarray,
    ids: Sequence[str],
    k: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """(speaker, intra-speaker cluster) pseudo-labels of the fold's training part.

    Args:
        config: gives the feature cache (its table) and the fold.
        embeddings: ``[M, D]`` speaker embeddings, rows named by ``ids`` (e.g. from
            :func:`hcld_lib.speaker_embeddings.speaker_embeddings`; may cover more utterances).
        ids: ``[M]`` utterance ids of ``embeddings``.
        k: clusters per speaker; ``None`` = the number of emotion classes of the corpus (a count
            of classes; no utterance's emotion is read).
        seed: k-means seed (``None`` = ``config.seed``).
    Returns:
        ``[N]`` int64 over the cache's table rows: labels ``>= 0`` on the fold's training part,
        ``-1`` elsewhere.
    """
    from hcld_lib.clustering import cluster_pseudo_labels
    from hcld_lib.training import emotion_labels_of

    _, table, fold, _ = fold_data(config)
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(ids):
        raise HcldError(f"{len(embeddings)} embeddings but {len(ids)} ids; pass one id per row")
    where = {str(u): i for i, u in enumerate(ids)}
    train_ids = table["utterance_id"].astype(str).to_numpy()[fold.train]
    missing = [u for u in train_ids if u not in where]
    if missing:
        raise HcldError(
            f"{len(missing)} training utterances (e.g. {missing[:3]}) have no speaker embedding; "
            "embed the same table the feature cache was made from"
        )
    k = len(emotion_labels_of(table)) if k is None else int(k)
    x = embeddings[[where[u] for u in train_ids]]
    speaker = table["speaker"].astype(str).to_numpy()[fold.train]
    labels = np.full(len(table), -1, dtype=np.int64)
    labels[fold.train] = cluster_pseudo_labels(
        x, speaker, k, seed=config.seed if seed is None else int(seed)
    )
    return labels


# --------------------------------------------------------------------------------------------
# pretraining
# --------------------------------------------------------------------------------------------
def _sidecar(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".json")


def pretrain_emotion_encoder(
    config: RunConfig,
    pseudo_labels: np.ndarray,
    out_path: str | os.PathLike,
    epochs: int | None = None,
    speaker_ce: bool = False,
    *,
    w_speaker: float = 1.0,
    temperature: float | None = None,
    other_speakers_negative: bool = False,
    batch_size: int | None = None,
    lr: float | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Pretrain an emotion encoder on the fold's training part with cluster pseudo-labels.

    Emotion labels are hidden: the dataset is given the pseudo-labels in their place and the
    table's ``emotion`` column is not read.

    Args:
        config: architecture, sizes, features, fold, frame pooling, seed, lr, warm-up and batch
            size (the encoder is ``build_encoder(config.emotion_arch, ...)`` with the sizes of
            ``config``, so it loads into the run's ``model.emotion_encoder``).
        pseudo_labels: ``[N]`` over the cache's table rows (:func:`fold_pseudo_labels`); rows of
            the fold's training part with a label ``>= 0`` are used.
        out_path: where the encoder's state_dict goes (atomically); ``<out_path>.json`` gets the
            history and settings first. If ``out_path`` exists, nothing is trained and its
            recorded history is returned.
        epochs: pretraining epochs (``None`` = ``config.epochs``).
        speaker_ce: add speaker classification (linear head on the embedding) with weight
            ``w_speaker``.
        temperature: ``tau`` (``None`` = ``config.temperature``).
        other_speakers_negative: other speakers' utterances are negatives too.
        batch_size, lr: ``None`` = the config's.
        verbose: print one line per epoch.
    Returns:
        ``dict(path=Path, history=DataFrame (epoch, lr, cluster, speaker_ce, total,
        anchors_with_positive, seconds), skipped=bool, meta=dict)``.
    """
    from torch.utils.data import DataLoader

    from hcld_lib.features import FeatureNormalizer
    from hcld_lib.models import LayerWeightedSum, build_encoder
    from hcld_lib.sampler import ContrastiveBatchSampler
    from hcld_lib.training import FeatureDataset, collate, resolve_device

    out_path = Path(out_path)
    side = _sidecar(out_path)
    if out_path.is_file() and side.is_file():
        record = json.loads(side.read_text())
        return {"path": out_path, "history": pd.DataFrame(record["history"]), "skipped": True,
                "meta": record["meta"]}

    epochs = config.epochs if epochs is None else int(epochs)
    temperature = config.temperature if temperature is None else float(temperature)
    batch_size = config.batch_size if batch_size is None else int(batch_size)
    lr_max = config.lr if lr is None else float(lr)
    if epochs < 1:
        raise HcldError(f"epochs={epochs}: pretraining needs at least one epoch")

    cache, table, fold, cache_row = fold_data(config)
    pseudo_labels = np.asarray(pseudo_labels)
    if pseudo_labels.shape != (len(table),):
        raise HcldError(
            f"pseudo_labels has shape {pseudo_labels.shape}, expected ({len(table)},) = one label "
            f"per row of the cache's table ({config.features}); build it with fold_pseudo_labels"
        )
    rows = fold.train[pseudo_labels[fold.train] >= 0]
    if len(rows) < 2:
        raise HcldError(f"only {len(rows)} training utterances of fold {config.fold} carry a "
                        "pseudo-label; build them with fold_pseudo_labels for this fold")
    set_seed(config.seed)
    device = resolve_device(config.device)
    pseudo = pseudo_labels[rows].astype(np.int64)
    speakers = table["speaker"].astype(str).to_numpy()[rows]
    speaker_names, spk = np.unique(speakers, return_inverse=True)
    spk = spk.astype(np.int64)

    normalizer = FeatureNormalizer().fit(cache, cache_row[rows])
    # the dataset's "emotion" slot carries the pseudo-labels: emotion labels stay hidden
    dataset = FeatureDataset(cache, cache_row[rows], normalizer, pseudo, spk,
                             config.frame_stride, config.max_frames)
    _, inverse, counts = np.unique(pseudo, return_inverse=True, return_counts=True)
    alone = int(np.sum(counts[inverse] < 2))
    if alone:
        warnings.warn(
            f"pretraining fold {config.fold}: {alone} of {len(rows)} utterances are alone in their "
            "intra-speaker cluster; they have no positive and serve as negatives only",
            stacklevel=2,
        )
    with warnings.catch_warnings():
        # the sampler's own warning speaks of emotions; the pseudo-labels stand in for them here
        warnings.simplefilter("ignore", UserWarning)
        sampler = ContrastiveBatchSampler(pseudo, spk, batch_size, seed=config.seed,
                                          need=("emotion", "speaker_emotion"))
    n_layers_in = int(getattr(cache, "n_layers", 1))
    encoder = build_encoder(config.emotion_arch, int(cache.feature_dim), config.embed_dim,
                            config.hidden_dim, config.n_layers, config.dropout,
                            config.n_heads).to(device)
    mix = LayerWeightedSum(n_layers_in).to(device) if n_layers_in > 1 else None
    head = torch.nn.Linear(config.embed_dim, len(speaker_names)).to(device) if speaker_ce else None
    params = list(encoder.parameters())
    params += list(mix.parameters()) if mix is not None else []
    params += list(head.parameters()) if head is not None else []
    optimizer = torch.optim.Adam(params, lr=lr_max, weight_decay=config.weight_decay)

    history: list[dict[str, Any]] = []
    elapsed = 0.0
    encoder.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=collate)
        n_steps = len(sampler)
        sums = {"cluster": 0.0, "speaker_ce": 0.0, "total": 0.0, "with_pos": 0.0, "n": 0.0}
        lr = lr_max
        for step, batch in enumerate(loader):
            if config.warmup_epochs > 0:
                lr = lr_max * min(1.0, (epoch + (step + 1) / n_steps) / config.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = batch["x"].to(device)
            if mix is not None:
                x = mix(x)
            z = encoder(x, batch["lengths"].to(device))
            b_spk, b_cl = batch["speaker"].to(device), batch["emotion"].to(device)
            l_cluster = cluster_contrastive_loss(z, b_spk, b_cl, temperature,
                                                 other_speakers_negative)
            total = l_cluster
            if head is not None:
                l_spk = F.cross_entropy(head(z), b_spk)
                total = total + w_speaker * l_spk
                sums["speaker_ce"] += float(l_spk.detach())
            if not torch.isfinite(total):
                raise HcldError(f"non-finite pretraining loss at epoch {epoch + 1} step {step}; "
                                "lower lr or raise the temperature")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            pos, _ = cluster_pairs(b_spk, b_cl, other_speakers_negative)
            sums["with_pos"] += float(pos.any(dim=1).sum())
            sums["n"] += len(b_spk)
            sums["cluster"] += float(l_cluster.detach())
            sums["total"] += float(total.detach())
        elapsed += time.perf_counter() - t0
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "cluster": sums["cluster"] / n_steps,
            "speaker_ce": sums["speaker_ce"] / n_steps if head is not None else float("nan"),
            "total": sums["total"] / n_steps,
            "anchors_with_positive": sums["with_pos"] / max(sums["n"], 1.0),
            "seconds": round(elapsed, 3),
        }
        history.append(row)
        if verbose:
            print(f"[pretrain fold {config.fold}] ep {epoch + 1}/{epochs} "
                  f"cluster {row['cluster']:.4f} total {row['total']:.4f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)

    meta = {
        "arch": config.emotion_arch, "input_dim": int(cache.feature_dim),
        "embed_dim": config.embed_dim, "hidden_dim": config.hidden_dim,
        "n_layers": config.n_layers, "n_heads": config.n_heads, "features": str(config.features),
        "fold": config.fold, "protocol": config.protocol, "seed": config.seed,
        "epochs": epochs, "batch_size": batch_size, "lr": lr_max, "temperature": temperature,
        "speaker_ce": bool(speaker_ce), "w_speaker": w_speaker,
        "other_speakers_negative": bool(other_speakers_negative),
        "n_utterances": int(len(rows)), "n_pseudo_labels": int(len(np.unique(pseudo))),
        "n_speakers": int(len(speaker_names)), "seconds": round(elapsed, 3),
    }
    # history first, weights last: an existing out_path always has its record beside it
    atomic_write_json(side, {"meta": meta, "history": history})
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    atomic_torch_save(state, out_path)
    return {"path": out_path, "history": pd.DataFrame(history), "skipped": False, "meta": meta}


# --------------------------------------------------------------------------------------------
# the label-budget experiment
# --------------------------------------------------------------------------------------------
def _pretrain_tag(config: RunConfig, embeddings: np.ndarray, k: int | None, epochs: int,
                  speaker_ce: bool, other_speakers_negative: bool) -> str:
    """A short hash of everything that makes a pretrained encoder (its file name)."""
    fields = {f: getattr(config, f) for f in (
        "features", "emotion_arch", "embed_dim", "hidden_dim", "n_layers", "n_heads", "dropout",
        "protocol", "n_folds", "fold", "val_fraction", "seed", "frame_stride", "max_frames",
        "batch_size", "lr", "warmup_epochs", "weight_decay", "temperature")}
    fields.update(k=k, epochs=epochs, speaker_ce=speaker_ce,
                  other_speakers_negative=other_speakers_negative,
                  embeddings=hashlib.sha1(np.ascontiguousarray(embeddings).tobytes()).hexdigest())
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]


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
    from hcld_lib.grid import grid_config
    from hcld_lib.training import train_run

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
            fold_cfg = grid_config(base, "emo_only", arch, fold, out_dir)
            tag = _pretrain_tag(fold_cfg, emb, k, pre_epochs, speaker_ce, other_speakers_negative)
            enc_file = out_dir / "pretrained" / (
                f"cluster__{arch}__{base.protocol}-fold{fold}__seed{base.seed}__{tag}.pt")
            if not (enc_file.is_file() and _sidecar(enc_file).is_file()):
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
                cfg = grid_config(base, variant, arch, fold, out_dir, overrides)
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
    from hcld_lib.plots_speaker import CONDITION_LABELS

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


def pretraining_history(path: str | os.PathLike) -> pd.DataFrame:
    """The per-epoch history recorded beside a pretrained encoder file (``<path>.json``)."""
    side = _sidecar(Path(path))
    if not side.is_file():
        raise HcldError(f"{side} does not exist: pretrain with pretrain_emotion_encoder first")
    return pd.DataFrame(json.loads(side.read_text())["history"])
