"""Cluster-based contrastive pretraining of the emotion path, on emotion-unlabelled speech.

From *emotion inside speaker embeddings* (Ulgen, Du, Busso, Sisman, ICASSP 2024): speaker
embeddings hide emotion as intra-speaker clusters (:mod:`hcld_lib.analysis.clustering`), so the
clusters can stand in for the emotion labels one does not have. Only that paper's abstract is
available to us; every choice below is a documented parameter.

**Pseudo-labels** (:func:`fold_pseudo_labels`). Embed the fold's training and validation
utterances with a pretrained speaker encoder (:mod:`hcld_lib.features.speaker_encoders`), run
k-means within each speaker (k = the number of emotion classes by default), and label every
utterance with its (speaker, cluster) pair. No emotion label is read; the test part is never
seen.

**Pretraining** (:func:`pretrain_emotion_encoder`): the emotion path of the run's own model
(``DualBranchModel(...).emotion_path()``: the layer mix and the encoder, or with shared branches
the encoder and the emotion projection) is trained by :func:`hcld_lib.training.fit.fit` on the
fold's *whole* training part with :func:`hcld_lib.method.losses.cluster_contrastive_loss`,
optionally multi-task with speaker classification, ``L = L_cluster + w_spk CE(W X_e, speaker)``
(``speaker_ce=True``). Batches come from :class:`hcld_lib.method.sampler.ContrastiveBatchSampler`
given the pseudo-labels in place of the emotions (every anchor has a positive and a same-speaker
negative). The saved file holds the emotion path's state; fine-tuning is
``train_run(config.replace(init_emotion_encoder=path))``.

**How long** (:func:`held_out_cluster_loss`). The training loss of a contrastive objective keeps
falling as the encoder memorises its own utterances, so it says nothing about convergence. After
every epoch the validation utterances (held out of pretraining, labelled only by their cluster)
are embedded and scored against the whole training part: the cluster loss of each held-out
anchor, whose positives are the training utterances of its speaker and cluster and whose
contrast set is its speaker's training utterances (the full sets: no batch sampling noise). The
run's plateau rule (``patience``, ``plateau_window``, ``min_epochs``, ``stop_at_plateau``;
:mod:`hcld_lib.training.stopping`) reads that curve, ``epochs`` is the most it trains, and the
epoch with the lowest held-out loss is kept. Without a validation part the run trains all its
epochs and keeps the last (and is not called converged).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from hcld_lib.analysis.clustering import cluster_pseudo_labels
from hcld_lib.data.labels import emotion_order
from hcld_lib.features.cache import FeatureCache
from hcld_lib.features.normalizer import FeatureNormalizer
from hcld_lib.features.resident import FoldFeatures, fold_features
from hcld_lib.io import HcldError, atomic_torch_save, atomic_write_json, read_json
from hcld_lib.method.losses import cluster_contrastive_loss, cluster_pairs, masked_contrastive_loss
from hcld_lib.method.models import DualBranchModel
from hcld_lib.method.sampler import ContrastiveBatchSampler
from hcld_lib.runtime import resolve_device, set_seed
from hcld_lib.training.config import RunConfig
from hcld_lib.training.evaluate import predict
from hcld_lib.training.fit import Batches, FitResult, fit
from hcld_lib.training.fold import fold_split
from hcld_lib.training.run import stopping_settings, training_length
from hcld_lib.training.stopping import should_stop

PRETRAIN_TERMS: tuple[str, ...] = ("cluster", "speaker_ce", "with_positive")
"""Logged per epoch as ``loss_<term>``; ``with_positive`` is the share of a batch's anchors that
had a positive (not a loss)."""

HELD_OUT = "val_cluster_loss"
"""The history column of :func:`held_out_cluster_loss` (lower is better), which the plateau rule
and the selection of the kept epoch read."""


def fold_pseudo_labels(
    config: RunConfig,
    embeddings: np.ndarray,
    ids: Sequence[str],
    k: int | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """(speaker, intra-speaker cluster) pseudo-labels of the fold's training and validation
    parts (clustered together within each speaker; pretraining trains on the first and judges its
    length on the second).

    Args:
        config: gives the feature cache (its table) and the fold.
        embeddings: ``[M, D]`` speaker embeddings, rows named by ``ids`` (may cover more
            utterances than the fold's training and validation parts).
        ids: ``[M]`` utterance ids of ``embeddings``.
        k: clusters per speaker; ``None`` = the number of emotion classes of the corpus (a count
            of classes; no utterance's emotion is read).
        seed: k-means seed (``None`` = ``config.seed``).
    Returns:
        ``[N]`` int64 over the cache's table rows: labels ``>= 0`` on the fold's training and
        validation parts, ``-1`` on its test part.
    """
    _, table, fold, _ = fold_split(config)
    embeddings = np.asarray(embeddings)
    if len(embeddings) != len(ids):
        raise HcldError(f"{len(embeddings)} embeddings but {len(ids)} ids; pass one id per row")
    where = {str(u): i for i, u in enumerate(ids)}
    seen = np.concatenate([fold.train, fold.val])
    seen_ids = table["utterance_id"].astype(str).to_numpy()[seen]
    missing = [u for u in seen_ids if u not in where]
    if missing:
        raise HcldError(
            f"{len(missing)} training or validation utterances (e.g. {missing[:3]}) have no "
            "speaker embedding; embed the same table the feature cache was made from"
        )
    k = len(emotion_order(table["emotion"])) if k is None else int(k)
    x = embeddings[[where[u] for u in seen_ids]]
    speaker = table["speaker"].astype(str).to_numpy()[seen]
    labels = np.full(len(table), -1, dtype=np.int64)
    labels[seen] = cluster_pseudo_labels(
        x, speaker, k, seed=config.seed if seed is None else int(seed)
    )
    return labels


def history_file(out_path: Path) -> Path:
    """The JSON record (settings and per-epoch history) beside a pretrained file."""
    return out_path.with_name(out_path.name + ".json")


def _checkpoint_file(out_path: Path) -> Path:
    """The resumable checkpoint beside a pretrained file while it trains."""
    return out_path.with_name(out_path.name + ".ckpt")


@dataclass
class _PseudoLabelled:
    """What pretraining sees of the fold: its training rows that carry a pseudo-label."""

    cache: FeatureCache
    table: pd.DataFrame
    rows: np.ndarray
    """[M] table rows: the fold's training part where the pseudo-label is ``>= 0``."""
    pseudo: np.ndarray
    """[M] their pseudo-labels (int64)."""
    speaker_names: np.ndarray
    """[S] their speakers, sorted."""
    speaker: np.ndarray
    """[M] each row's index in ``speaker_names`` (int64)."""
    device: torch.device
    features: FoldFeatures
    """Position m = table row ``rows[m]``, normalised with the statistics of ``rows``."""
    held_rows: np.ndarray
    """[V] table rows of the fold's validation part that carry a pseudo-label (may be empty)."""
    held_pseudo: np.ndarray
    """[V] their pseudo-labels."""
    held_speaker: np.ndarray
    """[V] each held-out row's index in ``speaker_names`` (-1: a speaker pretraining never saw)."""
    held_features: FoldFeatures | None
    """The held-out rows, normalised like ``features``; ``None`` when there are none."""


def _pseudo_labelled(config: RunConfig, pseudo_labels: np.ndarray) -> _PseudoLabelled:
    """The pseudo-labelled training rows of ``config``'s fold, seeded by ``config.seed``.

    Raises:
        HcldError: ``pseudo_labels`` is not ``[N]`` over the cache's table, or fewer than two
            training rows carry a label.
    """
    cache, table, fold, cache_row = fold_split(config)
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
    speakers = table["speaker"].astype(str).to_numpy()
    speaker_names, spk = np.unique(speakers[rows], return_inverse=True)
    normalizer = FeatureNormalizer().fit(cache, cache_row[rows])
    features = fold_features(cache, cache_row[rows], normalizer, config.frame_stride,
                             config.max_frames, device, config.resident)
    held = fold.val[pseudo_labels[fold.val] >= 0]
    index = {name: i for i, name in enumerate(speaker_names)}
    held_speaker = np.array([index.get(name, -1) for name in speakers[held]], dtype=np.int64)
    held_features = (fold_features(cache, cache_row[held], normalizer, config.frame_stride,
                                   config.max_frames, device, config.resident)
                     if len(held) else None)
    return _PseudoLabelled(cache, table, rows, pseudo, speaker_names, spk.astype(np.int64),
                           device, features, held, pseudo_labels[held].astype(np.int64),
                           held_speaker, held_features)


def _cluster_sampler(config: RunConfig, data: _PseudoLabelled) -> ContrastiveBatchSampler:
    """Batches of ``data``'s positions with the pseudo-labels in place of the emotions: every
    anchor has a positive (same cluster) and a same-speaker negative. Warns (for the caller of
    :func:`pretrain_emotion_encoder`) of utterances alone in their cluster."""
    _, inverse, counts = np.unique(data.pseudo, return_inverse=True, return_counts=True)
    alone = int(np.sum(counts[inverse] < 2))
    if alone:
        warnings.warn(
            f"pretraining fold {config.fold}: {alone} of {len(data.rows)} utterances are alone "
            "in their intra-speaker cluster; they have no positive and serve as negatives only",
            stacklevel=3,
        )
    with warnings.catch_warnings():
        # the sampler's own warning speaks of emotions; the pseudo-labels stand in for them here
        warnings.simplefilter("ignore", UserWarning)
        return ContrastiveBatchSampler(data.pseudo, data.speaker, config.batch_size,
                                       seed=config.seed, need=("emotion", "speaker_emotion"))


def _emotion_path_module(config: RunConfig, data: _PseudoLabelled, speaker_ce: bool
                         ) -> tuple[DualBranchModel, nn.ModuleDict]:
    """``config``'s model (no speaker branch) and what is trained of it, on ``data.device``:
    ``{"path": the emotion path}``, with ``speaker_ce`` also ``"speaker_head"`` (E -> S)."""
    model = DualBranchModel(
        input_dim=int(data.cache.feature_dim),
        n_emotions=max(2, len(emotion_order(data.table["emotion"]))),
        n_speakers=len(data.speaker_names), emotion_arch=config.emotion_arch,
        embed_dim=config.embed_dim, hidden_dim=config.hidden_dim, n_layers=config.n_layers,
        dropout=config.dropout, n_heads=config.n_heads, n_layers_in=int(data.cache.n_layers),
        speaker_branch=False, branches=config.branches,
    )
    parts = {"path": model.emotion_path()}
    if speaker_ce:
        parts["speaker_head"] = nn.Linear(config.embed_dim, len(data.speaker_names))
    return model, nn.ModuleDict(parts).to(data.device)


def held_out_cluster_loss(
    z_held: torch.Tensor,
    z_train: torch.Tensor,
    speaker_held: torch.Tensor | np.ndarray,
    speaker_train: torch.Tensor | np.ndarray,
    cluster_held: torch.Tensor | np.ndarray,
    cluster_train: torch.Tensor | np.ndarray,
    temperature: float,
    other_speakers_negative: bool = False,
) -> torch.Tensor:
    """The cluster loss of held-out anchors against the training utterances (module docstring)::

        P(i) = {p in train : s_p = s_i and c_p = c_i},   A(i) = {a in train : s_a = s_i}
               (every training utterance when other_speakers_negative)
        L = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)} log softmax_{a in A(i)}(z_i.z_a / tau)[p]

    over the held-out anchors ``I`` with at least one positive (L2-normalised embeddings).

    Args:
        z_held, z_train: ``[V, E]`` and ``[M, E]`` embeddings.
        speaker_held, speaker_train, cluster_held, cluster_train: their speakers and clusters (a
            speaker index < 0 matches no training speaker).
        temperature: ``tau``. other_speakers_negative: contrast against every training utterance.
    Returns: scalar tensor (0 when no held-out anchor has a positive).
    """
    pos, valid = held_out_pairs(speaker_held, speaker_train, cluster_held, cluster_train,
                                other_speakers_negative, z_held.device)
    return masked_contrastive_loss(z_held, z_train, pos, valid, temperature)


def held_out_pairs(
    speaker_held: torch.Tensor | np.ndarray,
    speaker_train: torch.Tensor | np.ndarray,
    cluster_held: torch.Tensor | np.ndarray,
    cluster_train: torch.Tensor | np.ndarray,
    other_speakers_negative: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, A)`` of :func:`held_out_cluster_loss` as ``[V, M]`` bool masks: positives (same
    speaker and cluster) and the contrast set (same speaker, or every training utterance)."""
    s_h, s_t, c_h, c_t = (torch.as_tensor(v, device=device)
                          for v in (speaker_held, speaker_train, cluster_held, cluster_train))
    same_spk = s_h[:, None] == s_t[None, :]
    pos = same_spk & (c_h[:, None] == c_t[None, :])
    return pos, (torch.ones_like(pos) if other_speakers_negative else same_spk)


def held_out_chance(data: _PseudoLabelled, other_speakers_negative: bool) -> float | None:
    """:func:`held_out_cluster_loss` of an encoder that tells no utterance apart (every
    similarity equal): the mean of ``log |A(i)|`` over the held-out anchors with a positive;
    ``None`` without such anchors."""
    pos, valid = held_out_pairs(data.held_speaker, data.speaker, data.held_pseudo, data.pseudo,
                                other_speakers_negative)
    anchors = pos.any(dim=1)
    return (float(valid[anchors].sum(dim=1).double().log().mean()) if bool(anchors.any())
            else None)


def _cluster_task(
    model: DualBranchModel,
    module: nn.ModuleDict,
    data: _PseudoLabelled,
    sampler: ContrastiveBatchSampler,
    tau: float,
    other_speakers_negative: bool,
    speaker_ce: bool,
    w_speaker: float,
    batch_size: int,
) -> tuple[Callable[[int], Batches], Callable[..., Any], Callable[..., Any],
           Callable[[int], Any]]:
    """:func:`fit`'s ``batches``, ``forward``, ``loss`` and ``evaluate``:
    ``L = L_cluster + w_spk CE(W X_e, speaker)``, the second term with ``speaker_ce``; the
    evaluation is :func:`held_out_cluster_loss` of the validation rows (none without them)."""
    # the pseudo-labels stand in for the emotions: emotion labels stay hidden
    cluster_t = torch.as_tensor(data.pseudo, device=data.device)
    speaker_t = torch.as_tensor(data.speaker, device=data.device)

    def make_batch(positions: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(positions, device=data.device, dtype=torch.long)
        x, lengths = data.features.gather(idx)
        return {"x": x, "lengths": lengths, "cluster": cluster_t[idx], "speaker": speaker_t[idx]}

    def batches(epoch: int) -> Batches:
        return Batches(sampler.batches(epoch), make_batch)

    def forward(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        return model(batch["x"], batch["lengths"])

    def loss(out: dict[str, torch.Tensor | None], batch: dict[str, torch.Tensor]):
        b_spk, b_cl = batch["speaker"], batch["cluster"]
        l_cluster = cluster_contrastive_loss(out["x_e"], b_spk, b_cl, tau,
                                             other_speakers_negative)
        pos, _ = cluster_pairs(b_spk, b_cl, other_speakers_negative)
        terms: dict[str, Any] = {"cluster": l_cluster,
                                 "with_positive": float(pos.any(dim=1).float().mean())}
        total = l_cluster
        if speaker_ce:
            terms["speaker_ce"] = F.cross_entropy(module["speaker_head"](out["x_e"]), b_spk)
            total = total + w_speaker * terms["speaker_ce"]
        return total, terms

    def embed(features: FoldFeatures) -> torch.Tensor:
        x_e = predict(model, features, np.arange(len(features)), batch_size)["x_e"]
        return torch.from_numpy(x_e).to(data.device)

    def evaluate(epoch: int) -> tuple[dict[str, float], float | None, None]:
        if data.held_features is None:
            return {}, None, None
        value = float(held_out_cluster_loss(
            embed(data.held_features), embed(data.features), data.held_speaker, data.speaker,
            data.held_pseudo, data.pseudo, tau, other_speakers_negative))
        return {HELD_OUT: value}, -value, None

    return batches, forward, loss, evaluate


def _pretrain_meta(config: RunConfig, data: _PseudoLabelled, epochs: int, tau: float,
                   speaker_ce: bool, w_speaker: float, other_speakers_negative: bool
                   ) -> dict[str, Any]:
    """The settings saved with the result (and, with the pseudo-labels, its identity)."""
    return {
        "arch": config.emotion_arch, "branches": config.branches,
        "input_dim": int(data.cache.feature_dim), "n_layers_in": int(data.cache.n_layers),
        "embed_dim": config.embed_dim, "hidden_dim": config.hidden_dim,
        "n_layers": config.n_layers, "n_heads": config.n_heads, "features": str(config.features),
        "fold": config.fold, "protocol": config.protocol, "seed": config.seed,
        "epochs": epochs, "batch_size": config.batch_size, "lr": config.lr, "temperature": tau,
        "speaker_ce": bool(speaker_ce), "w_speaker": w_speaker,
        "other_speakers_negative": bool(other_speakers_negative),
        "n_utterances": int(len(data.rows)), "n_held_out": int(len(data.held_rows)),
        "n_pseudo_labels": int(len(np.unique(data.pseudo))),
        "n_speakers": int(len(data.speaker_names)),
    }


def _save_pretrained(out_path: Path, model: DualBranchModel, meta: dict[str, Any],
                     result: FitResult) -> dict[str, Any]:
    """Write ``<out_path>.json`` (``meta`` with the seconds, and the history), then ``out_path``
    (the emotion path's state of ``model``, and ``meta``); drop the checkpoint. Returns what
    :func:`pretrain_emotion_encoder` returns."""
    meta["seconds"] = round(result.seconds, 3)
    # history first, weights last: an existing out_path always has its record beside it
    atomic_write_json(history_file(out_path), {"meta": meta, "history": result.history})
    atomic_torch_save({"emotion_path": model.emotion_state(), "meta": meta}, out_path)
    _checkpoint_file(out_path).unlink(missing_ok=True)
    return {"path": out_path, "history": pd.DataFrame(result.history), "skipped": False,
            "meta": meta}


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
    verbose: bool = False,
) -> dict[str, Any]:
    """Pretrain the emotion path of ``config``'s model with cluster pseudo-labels.

    Emotion labels are hidden: the sampler and the loss see the pseudo-labels in their place
    and the table's ``emotion`` column is not read (only the number of classes, for the size of
    the emotion head, which is not trained here).

    Args:
        config: architecture, branches, sizes, features, fold, frame pooling, seed, lr, warm-up,
            batch size and checkpointing of the run the encoder is for.
        pseudo_labels: ``[N]`` over the cache's table rows (:func:`fold_pseudo_labels`); rows of
            the fold's training part with a label ``>= 0`` are used.
        out_path: the file the emotion path's state goes to (atomically, last);
            ``<out_path>.json`` gets the history and settings first, ``<out_path>.ckpt`` is the
            resumable checkpoint while it trains. An existing ``out_path`` is not trained again.
        epochs: the most epochs pretraining trains (``None`` = ``config.max_epochs``); with
            ``config.stop_at_plateau`` it stops earlier at the plateau of the held-out cluster
            loss (module docstring).
        speaker_ce: add speaker classification (a linear head on X_e) with weight ``w_speaker``.
        temperature: ``tau`` (``None`` = ``config.temperature``).
        other_speakers_negative: other speakers' utterances are negatives too.
        verbose: print one line per epoch.
    Returns:
        ``dict(path=Path, history=DataFrame (epoch, lr, loss, loss_cluster, loss_speaker_ce,
        loss_with_positive, val_cluster_loss, seconds), skipped=bool, meta=dict)``; ``meta`` has
        the settings and how long it trained (``epochs_trained, stop_reason, plateau_epoch,
        converged, best_epoch``).
    """
    out_path = Path(out_path)
    side = history_file(out_path)
    if out_path.is_file() and side.is_file():
        record = read_json(side, what="a pretrained encoder's history", keys=("history", "meta"),
                           remedy=f"delete {out_path} and {side.name} and pretrain again")
        return {"path": out_path, "history": pd.DataFrame(record["history"]), "skipped": True,
                "meta": record["meta"]}
    epochs = config.max_epochs if epochs is None else int(epochs)
    tau = config.temperature if temperature is None else float(temperature)
    if epochs < 1:
        raise HcldError(f"epochs={epochs}: pretraining needs at least one epoch")
    data = _pseudo_labelled(config, pseudo_labels)
    sampler = _cluster_sampler(config, data)
    model, module = _emotion_path_module(config, data, speaker_ce)
    batches, forward, loss, evaluate = _cluster_task(
        model, module, data, sampler, tau, other_speakers_negative, speaker_ce, w_speaker,
        config.batch_size)

    def report(row: dict[str, Any]) -> None:
        if verbose:
            held = f"  held-out {row[HELD_OUT]:.4f}" if HELD_OUT in row else ""
            print(f"[pretrain fold {config.fold}] ep {row['epoch']}/{epochs} "
                  f"cluster {row['loss_cluster']:.4f} total {row['loss']:.4f}{held}", flush=True)

    meta = _pretrain_meta(config, data, epochs, tau, speaker_ce, w_speaker,
                          other_speakers_negative)
    # without a validation part the curve is all NaN: the rule never holds, the last epoch is kept
    rule = {**stopping_settings(config.replace(max_epochs=epochs)), "score": HELD_OUT,
            "lower_is_better": True}
    result = fit(
        module, batches, forward, loss, epochs=epochs, lr=config.lr,
        warmup_epochs=config.warmup_epochs, weight_decay=config.weight_decay,
        terms=PRETRAIN_TERMS, evaluate=evaluate, checkpoint=_checkpoint_file(out_path),
        checkpoint_every=config.checkpoint_every,
        identity={**meta, "pseudo_labels": data.pseudo.tolist(),
                  "held_out": data.held_pseudo.tolist()},
        on_epoch_end=report, stop=lambda history: should_stop(history, **rule),
        device=data.device, amp=config.amp,
    )
    module.load_state_dict(result.best_state)
    meta.update(training_length(config, result.history, result.stopped_early, HELD_OUT,
                                lower_is_better=True),
                best_epoch=result.best_epoch,
                held_out_loss=result.history[result.best_epoch - 1].get(HELD_OUT),
                held_out_chance=held_out_chance(data, other_speakers_negative))
    return _save_pretrained(out_path, model, meta, result)


def pretraining_record(path: str | os.PathLike) -> dict[str, Any]:
    """What is recorded beside a pretrained file (``<path>.json``): ``{"meta": settings and
    how long it trained, "history": one row per epoch}``."""
    side = history_file(Path(path))
    if not side.is_file():
        raise HcldError(f"{side} does not exist: pretrain with pretrain_emotion_encoder first")
    return read_json(side, what="a pretrained encoder's history", keys=("history", "meta"),
                     remedy=f"delete {side} and the encoder beside it and pretrain again")


def pretraining_history(path: str | os.PathLike) -> pd.DataFrame:
    """The per-epoch history recorded beside a pretrained file (``<path>.json``)."""
    return pd.DataFrame(pretraining_record(path)["history"])
