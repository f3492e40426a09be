"""Training: one run = one variant x architecture pair x fold, from a feature cache to results.

:func:`train_run` is the single entry point of the notebooks and the grid. The loop reads like
the method (SPEC §1)::

    for epoch in 1..E:
        for batch in ContrastiveBatchSampler(...):          # positives for every contrastive term
            out  = model(x, lengths)                           # X_e, X_s, emotion/speaker logits
            L    = w_te CE(emotion) + w_ts CE(speaker)         # task
                 + w_cld (L_pos + L_neg)                       # ICLD
                 + w_sc  SupCon(X_e | emotion  or  X_s | speaker)
                 + w_lab L_label(anchors(emotion), X_e)        # LCL
                 + w_orth mean_kl corr(Z_e, Z_s)_kl^2         # the "orth" baseline
            Adam step; learning rate warmed up linearly per step
        evaluate val / test / speaker_test; select on val emotion UA; checkpoint

**Schedule** (the paper's, by default): Adam, lr 5e-4, batch 32, 100 epochs; the learning rate
rises linearly over the first ``warmup_epochs`` epochs, step by step
(``lr_t = lr * min(1, (epoch + (step + 1) / steps_in_epoch) / warmup_epochs)``, epoch counted from
0), then stays constant (the paper states no decay). The schedule is a pure function of (epoch,
step), so a resumed run needs no scheduler state.

**Model selection** uses the fold's validation part (carved from its training part): the epoch with
the highest validation emotion UA, the earlier epoch on ties. The best test emotion UA over all
epochs is also reported, as ``best_on_test``, labelled optimistic (it peeks at the test set).

**Resumption.** After every epoch ``checkpoint.pt`` (model, optimiser, label anchors, the Python /
NumPy / torch RNG states, history, best state) is written atomically. Batches depend only on
``(seed, epoch)``, so a killed run started again continues where it stopped and ends with exactly
the metrics of an uninterrupted run. A run whose ``metrics.json`` exists is not trained again.

Files of a run, in ``out_dir/<run_name>/``: ``metrics.json``, ``history.csv``, ``embeddings.npz``,
``model.pt`` (and ``checkpoint.pt`` while the run is in flight).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hcld_lib.config import EMOTIONS, RunConfig, set_seed
from hcld_lib.io import (
    HcldError,
    atomic_save_npz,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
)
from hcld_lib.metrics import classification_metrics
from hcld_lib.sampler import ContrastiveBatchSampler

if TYPE_CHECKING:
    from hcld_lib.features import FeatureCache
    from hcld_lib.splits import Fold

LOSS_TERMS: tuple[str, ...] = (
    "ce_emotion",
    "ce_speaker",
    "icld_pos",
    "icld_neg",
    "icld",
    "supcon",
    "label",
    "orth",
)
"""Loss terms logged per epoch (unweighted means over the epoch's batches), as ``loss_<term>``."""

CHECKPOINT_VERSION = 1

# --- data ----------------------------------------------------------------------------------------


def pool_frames(x: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, int]:
    """Average-pool the frames of one utterance by ``stride``, over valid frames only.

    Args:
        x: ``[..., T, D]`` features whose frames ``>= length`` are padding (set to zero here).
        length: number of valid frames.
        stride: pooling factor (1 = unchanged).
    Returns:
        ``([..., ceil(T / stride), D], ceil(length / stride))``: pooled window ``t`` is the mean of
        the valid frames ``t*stride .. t*stride + stride - 1``; windows past the end are zero.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    x[..., length:, :] = 0.0
    if stride == 1:
        return x, int(length)
    t = x.shape[-2]
    t_out = math.ceil(t / stride)
    pad = t_out * stride - t
    if pad:
        widths = [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)]
        x = np.pad(x, widths)
    summed = x.reshape(*x.shape[:-2], t_out, stride, x.shape[-1]).sum(axis=-2)
    counts = np.clip(length - np.arange(t_out) * stride, 1, stride).astype(np.float32)
    return summed / counts[:, None], math.ceil(length / stride)


class FeatureDataset(Dataset):
    """Rows of a feature cache, normalised, frame-pooled and cropped, with their labels.

    ``__getitem__(i) -> (x [T', D] or [L, T', D] float32, length, emotion, speaker, i)`` where
    ``T' = min(ceil(T / frame_stride), max_frames)`` and ``length`` the valid pooled frames.
    Speaker ``-1`` marks a speaker unseen in training.
    """

    def __init__(
        self,
        cache: Any,
        rows: np.ndarray,
        normalizer: Any,
        emotion: np.ndarray,
        speaker: np.ndarray,
        frame_stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.normalizer = normalizer
        self.emotion = np.asarray(emotion, dtype=np.int64)
        self.speaker = np.asarray(speaker, dtype=np.int64)
        self.frame_stride = int(frame_stride)
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, int, int]:
        row = int(self.rows[i])
        length = int(self.cache.lengths[row])
        x = self.normalizer.transform(np.asarray(self.cache.array[row], dtype=np.float32))
        x, length = pool_frames(np.asarray(x), length, self.frame_stride)
        if self.max_frames is not None:
            x = x[..., : self.max_frames, :]
            length = min(length, int(self.max_frames))
        length = max(length, 1)
        return torch.from_numpy(np.ascontiguousarray(x)), length, int(self.emotion[i]), int(
            self.speaker[i]
        ), i


def collate(items: list[tuple[Tensor, int, int, int, int]]) -> dict[str, Tensor]:
    """Stack items; crop time to the longest valid length in the batch (padding is masked)."""
    x = torch.stack([it[0] for it in items])
    lengths = torch.tensor([it[1] for it in items], dtype=torch.long)
    x = x[..., : int(lengths.max()), :]
    return {
        "x": x,
        "lengths": lengths,
        "emotion": torch.tensor([it[2] for it in items], dtype=torch.long),
        "speaker": torch.tensor([it[3] for it in items], dtype=torch.long),
        "index": torch.tensor([it[4] for it in items], dtype=torch.long),
    }


def emotion_labels_of(table: pd.DataFrame) -> list[str]:
    """The emotion classes of a table: those of :data:`EMOTIONS` present, in that order, then any
    other label (a manifest corpus) in sorted order."""
    present = set(table["emotion"].astype(str))
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def label_budget_subset(
    rows: np.ndarray, emotion: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A seeded, emotion-stratified subset of ``rows`` holding ``fraction`` of each class.

    Each class keeps ``max(1, round(fraction * n_class))`` rows, so no class disappears.
    ``emotion`` is aligned with ``rows``. Returns sorted row indices (``rows`` itself when
    ``fraction >= 1``). This is the labelled part of the §6 label-budget experiment; the rest of
    ``rows`` is the unlabelled part.
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


def sampler_needs(config: RunConfig) -> tuple[str, ...]:
    """The positives the batches must hold for the contrastive terms of ``config``."""
    needs = []
    if config.w_supcon > 0:
        needs.append("emotion" if config.supcon_space == "emotion" else "speaker")
    if config.w_label > 0:
        needs.append("emotion")
    if config.w_cld > 0:
        needs.append("speaker_emotion")
    return tuple(dict.fromkeys(needs))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --- model ---------------------------------------------------------------------------------------


def _model_kwargs(config: RunConfig, input_dim: int, n_layers_in: int, n_emo: int, n_spk: int
                  ) -> dict[str, Any]:
    return dict(
        input_dim=int(input_dim),
        n_emotions=int(n_emo),
        n_speakers=int(n_spk),
        emotion_arch=config.emotion_arch,
        speaker_arch=config.speaker_arch_resolved,
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        n_layers=config.n_layers,
        dropout=config.dropout,
        n_heads=config.n_heads,
        n_layers_in=int(n_layers_in),
        speaker_branch=config.speaker_branch,
    )


def load_emotion_encoder(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``model.emotion_encoder`` (§6 pretraining).

    The file holds the encoder's state_dict, or a dict with it under ``"emotion_encoder"``.
    Raises :class:`HcldError` naming the file when it is missing, unreadable or does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise HcldError(f"init_emotion_encoder file {path} does not exist; pretrain first or fix "
                        "the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise HcldError(f"cannot read init_emotion_encoder file {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("emotion_encoder"), dict):
        state = state["emotion_encoder"]
    if not isinstance(state, dict):
        raise HcldError(f"init_emotion_encoder file {path} holds a {type(state).__name__}, "
                        "not a state_dict")
    try:
        model.emotion_encoder.load_state_dict(state)
    except RuntimeError as err:
        raise HcldError(
            f"init_emotion_encoder file {path} does not fit the emotion encoder of this run "
            f"(arch, embed_dim, hidden_dim, n_layers and the feature size must match): {err}"
        ) from err


def _check_config(config: RunConfig) -> None:
    if config.speaker_branch:
        return
    needs_spk = {
        "w_task_speaker": config.w_task_speaker,
        "w_cld": config.w_cld,
        "w_orth": config.w_orth,
        "w_supcon (supcon_space='speaker')": (
            config.w_supcon if config.supcon_space == "speaker" else 0.0
        ),
    }
    bad = [k for k, w in needs_spk.items() if w > 0]
    if bad:
        raise HcldError(f"speaker_branch=False but {bad} > 0 need the speaker branch; set them "
                        "to 0 or enable speaker_branch")


def _loss_terms(
    config: RunConfig, out: dict[str, Tensor | None], emotion: Tensor, speaker: Tensor,
    anchors: torch.nn.Module | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted total and the unweighted terms (only those with a non-zero weight)."""
    from hcld_lib import losses

    x_e, x_s = out["x_e"], out["x_s"]
    terms: dict[str, Tensor] = {}
    total = x_e.new_zeros(())
    if config.w_task_emotion > 0:
        terms["ce_emotion"] = F.cross_entropy(out["emotion_logits"], emotion)
        total = total + config.w_task_emotion * terms["ce_emotion"]
    if config.w_task_speaker > 0 and out["speaker_logits"] is not None:
        terms["ce_speaker"] = F.cross_entropy(out["speaker_logits"], speaker)
        total = total + config.w_task_speaker * terms["ce_speaker"]
    if config.w_cld > 0:
        icld = losses.icld_loss(x_e, x_s, emotion, speaker, margin=config.margin,
                                pos_space=config.pos_space, hinge=config.hinge)
        terms.update(icld_pos=icld["pos"], icld_neg=icld["neg"], icld=icld["total"])
        total = total + config.w_cld * icld["total"]
    if config.w_supcon > 0:
        if config.supcon_space == "emotion":
            terms["supcon"] = losses.supcon_loss(x_e, emotion, temperature=config.temperature)
        else:
            terms["supcon"] = losses.supcon_loss(x_s, speaker, temperature=config.temperature)
        total = total + config.w_supcon * terms["supcon"]
    if config.w_label > 0 and anchors is not None:
        terms["label"] = losses.label_anchored_loss(
            anchors(emotion), x_e, emotion, temperature=config.temperature,
            include_self=config.lcl_include_self,
        )
        total = total + config.w_label * terms["label"]
    if config.w_orth > 0:
        terms["orth"] = losses.orthogonality_loss(x_e, x_s, form=config.orth_form)
        total = total + config.w_orth * terms["orth"]
    return total, terms


@torch.no_grad()
def _predict(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device
             ) -> dict[str, np.ndarray | None]:
    """Embeddings and predictions of every item of ``dataset`` (eval mode, in order)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        collate_fn=collate)
    parts: dict[str, list[np.ndarray]] = {"x_e": [], "x_s": [], "emotion_pred": [],
                                          "speaker_pred": []}
    for batch in loader:
        out = model(batch["x"].to(device), batch["lengths"].to(device))
        parts["x_e"].append(out["x_e"].float().cpu().numpy())
        parts["emotion_pred"].append(out["emotion_logits"].argmax(-1).cpu().numpy())
        if out["x_s"] is not None:
            parts["x_s"].append(out["x_s"].float().cpu().numpy())
            parts["speaker_pred"].append(out["speaker_logits"].argmax(-1).cpu().numpy())
    model.train(was_training)
    return {k: (np.concatenate(v) if v else None) for k, v in parts.items()}


def _split_metrics(pred: dict[str, np.ndarray | None], emotion: np.ndarray, speaker: np.ndarray,
                   emotion_labels: list[str], speaker_labels: list[str], with_speaker: bool
                   ) -> dict[str, Any]:
    """``{"emotion": metrics, "speaker": metrics or None, "n": N}`` of one split.

    Speaker metrics cover the items whose speaker was seen in training (label >= 0)."""
    result: dict[str, Any] = {"n": int(len(emotion)), "emotion": None, "speaker": None}
    if len(emotion) == 0:
        return result
    emo_names = np.asarray(emotion_labels)
    result["emotion"] = classification_metrics(
        emo_names[emotion], emo_names[pred["emotion_pred"]], emotion_labels
    )
    known = speaker >= 0
    if with_speaker and pred["speaker_pred"] is not None and known.any():
        spk_names = np.asarray(speaker_labels)
        result["speaker"] = classification_metrics(
            spk_names[speaker[known]], spk_names[pred["speaker_pred"][known]], speaker_labels
        )
    return result


def _flat(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    row = {}
    for task in ("emotion", "speaker"):
        for name in ("wa", "ua"):
            block = metrics.get(task)
            row[f"{split}_{task}_{name}"] = float(block[name]) if block else float("nan")
    return row


def _progress_line(config: RunConfig, row: dict[str, Any], seconds: float) -> str:
    """One compact line per epoch: loss, emotion UA on val and test, speaker UA."""

    def pct(key: str) -> str:
        v = row.get(key, float("nan"))
        return "  -  " if math.isnan(v) else f"{100 * v:5.1f}"

    spk_split = "test" if config.protocol == "paper" else "speaker_test"
    return (f"[{config.resolved_run_name}] ep {row['epoch']:3d}/{config.epochs} "
            f"loss {row['loss']:.3f}  val UA {pct('val_emotion_ua')}  "
            f"test UA {pct('test_emotion_ua')}  spk UA {pct(spk_split + '_speaker_ua')}  "
            f"{seconds:.1f}s")


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_copy(module: torch.nn.Module | None) -> dict[str, Tensor] | None:
    if module is None:
        return None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Config fields that define the result (not where it is written or on which device)."""
    return {k: v for k, v in config_dict.items() if k not in ("out_dir", "device", "extra")}


# --- the run -------------------------------------------------------------------------------------


def fold_data(config: RunConfig) -> tuple[FeatureCache, pd.DataFrame, Fold, np.ndarray]:
    """The cache, its utterance table, the config's fold, and each table row's cache row.

    What :func:`train_run` and the §6 pretraining both start from, so that they see the same split.
    """
    from hcld_lib.features import open_cache
    from hcld_lib.splits import make_folds

    cache = open_cache(config.features)
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


def train_run(
    config: RunConfig,
    verbose: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run and write its results to ``config.out_dir/<config.resolved_run_name>/``.

    Args:
        config: the run (see :class:`hcld_lib.config.RunConfig`).
        verbose: print one compact line per epoch.
        on_epoch_end: called as ``on_epoch_end(epoch, history_row)`` after each epoch's
            checkpoint is written (epochs count from 1).
    Returns:
        The content of ``metrics.json``: ``config``, ``run_name``, ``fold``, ``protocol``,
        ``selected_epoch``, ``val`` / ``test`` / ``speaker_test`` (each ``{"emotion": metrics,
        "speaker": metrics or None, "n": N}``, metrics from
        :func:`hcld_lib.metrics.classification_metrics`), ``best_on_test`` (optimistic),
        ``n_train`` / ``n_val`` / ``n_test`` / ``n_speaker_test``, ``emotion_labels``,
        ``speaker_labels``, ``seconds``. If ``metrics.json`` exists it is returned at once.
    """
    from hcld_lib.features import FeatureNormalizer
    from hcld_lib.models import DualBranchModel

    run_dir = Path(config.out_dir) / config.resolved_run_name
    metrics_path = run_dir / "metrics.json"
    ckpt_path = run_dir / "checkpoint.pt"
    if metrics_path.is_file():
        ckpt_path.unlink(missing_ok=True)
        return json.loads(metrics_path.read_text())
    _check_config(config)
    set_seed(config.seed)
    device = resolve_device(config.device)

    # --- data: cache, fold, label budget, normaliser -----------------------------------------
    cache, table, fold, cache_row = fold_data(config)
    emotion_labels = emotion_labels_of(table)
    emo_index = {e: i for i, e in enumerate(emotion_labels)}
    emotion_all = table["emotion"].astype(str).map(emo_index).to_numpy(np.int64)
    train = label_budget_subset(fold.train, emotion_all[fold.train], config.train_fraction,
                                config.seed)
    speakers_all = table["speaker"].astype(str).to_numpy()
    speaker_labels = sorted(set(speakers_all[train]))
    spk_index = {s: i for i, s in enumerate(speaker_labels)}
    speaker_all = np.array([spk_index.get(s, -1) for s in speakers_all], dtype=np.int64)

    normalizer = FeatureNormalizer().fit(cache, cache_row[train])

    def dataset(rows: np.ndarray) -> FeatureDataset:
        return FeatureDataset(cache, cache_row[rows], normalizer, emotion_all[rows],
                              speaker_all[rows], config.frame_stride, config.max_frames)

    splits = {"val": fold.val, "test": fold.test, "speaker_test": fold.speaker_test}
    same_test = np.array_equal(fold.test, fold.speaker_test)
    train_set = dataset(train)
    eval_sets = {k: dataset(v) for k, v in splits.items()}
    sampler = ContrastiveBatchSampler(emotion_all[train], speaker_all[train], config.batch_size,
                                      seed=config.seed, need=sampler_needs(config))

    # --- model, anchors, optimiser --------------------------------------------------------------
    kwargs = _model_kwargs(config, cache.feature_dim, getattr(cache, "n_layers", 1),
                           len(emotion_labels), len(speaker_labels))
    model = DualBranchModel(**kwargs).to(device)
    anchors = None
    if config.w_label > 0:
        from hcld_lib.label_embeddings import LabelAnchors

        # The text embeddings are computed once per out_dir (a .npy cache); the anchors are
        # initialised from their own seeded generator, so whether the text encoder ran (and used
        # the global RNG) or the cache answered does not change the run.
        with torch.random.fork_rng(devices=[]):
            anchors = LabelAnchors(emotion_labels, config.embed_dim,
                                   text_encoder=config.text_encoder,
                                   cache_dir=Path(config.out_dir) / ".label_text")
            torch.manual_seed(config.seed + 1)
            for module in anchors.modules():
                if module is not anchors and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        anchors = anchors.to(device)
    params = list(model.parameters()) + (list(anchors.parameters()) if anchors else [])
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "score": -math.inf, "model": None, "anchors": None,
                            "metrics": None}
    start_epoch = 0
    elapsed = 0.0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if _comparable(ckpt.get("config", {})) != _comparable(config.to_dict()):
            raise HcldError(f"{ckpt_path} belongs to a different configuration; delete it (or the "
                            "run folder) to start this run afresh")
        model.load_state_dict(ckpt["model"])
        if anchors is not None:
            anchors.load_state_dict(ckpt["anchors"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, best = ckpt["history"], ckpt["best"]
        start_epoch, elapsed = int(ckpt["epoch"]), float(ckpt["seconds"])
        _set_rng_state(ckpt["rng"])
    elif config.init_emotion_encoder:
        load_emotion_encoder(model, config.init_emotion_encoder)
    model.train()
    eval_bs = max(2 * config.batch_size, 32)

    # --- the loop ---------------------------------------------------------------------------------
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=0, collate_fn=collate)
        n_steps = len(sampler)
        sums: dict[str, float] = {}
        lr = config.lr
        for step, batch in enumerate(loader):
            if config.warmup_epochs > 0:
                lr = config.lr * min(1.0, (epoch + (step + 1) / n_steps) / config.warmup_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            emotion = batch["emotion"].to(device)
            speaker = batch["speaker"].to(device)
            out = model(batch["x"].to(device), batch["lengths"].to(device))
            loss, terms = _loss_terms(config, out, emotion, speaker, anchors)
            if not torch.isfinite(loss):
                raise HcldError(f"non-finite loss at epoch {epoch + 1} step {step} "
                                f"({ {k: float(v) for k, v in terms.items()} }); lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())

        # evaluation
        split_metrics = {}
        for name, ds in eval_sets.items():
            if name == "speaker_test" and same_test:
                split_metrics[name] = split_metrics["test"]
                continue
            pred = _predict(model, ds, eval_bs, device)
            with_speaker = not (name == "test" and config.protocol == "loso")
            split_metrics[name] = _split_metrics(pred, ds.emotion, ds.speaker, emotion_labels,
                                                 speaker_labels, with_speaker)
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr,
                               "loss": sums.get("loss", 0.0) / max(n_steps, 1)}
        for term in LOSS_TERMS:
            row[f"loss_{term}"] = sums[term] / n_steps if term in sums else float("nan")
        for name, m in split_metrics.items():
            row.update(_flat(name, m))
        elapsed += time.perf_counter() - t0
        row["seconds"] = elapsed
        history.append(row)

        val_emo = split_metrics["val"]["emotion"]
        score = val_emo["ua"] if val_emo else float(epoch)  # no val part: keep the last epoch
        if val_emo is None or score > best["score"]:
            best = {"epoch": epoch + 1, "score": score, "model": _state_copy(model),
                    "anchors": _state_copy(anchors), "metrics": split_metrics}

        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
        atomic_torch_save(
            {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch + 1,
             "model": _state_copy(model), "anchors": _state_copy(anchors),
             "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
             "rng": _rng_state(), "history": history, "best": best, "seconds": elapsed},
            ckpt_path,
        )
        if verbose:
            print(_progress_line(config, row, time.perf_counter() - t0), flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)

    if not history:
        raise HcldError(f"epochs={config.epochs}: nothing to train")

    # --- results of the selected epoch ----------------------------------------------------------
    final_t0 = time.perf_counter()
    model.load_state_dict(best["model"])
    if anchors is not None and best["anchors"] is not None:
        anchors.load_state_dict(best["anchors"])
    arrays: dict[str, np.ndarray] = {}
    parts = [("", "test")] + ([] if same_test else [("spk_", "speaker_test")])
    for prefix, name in parts:
        ds, rows = eval_sets[name], splits[name]
        if len(rows) == 0:
            continue
        pred = _predict(model, ds, eval_bs, device)
        arrays[prefix + "x_e"] = pred["x_e"].astype(np.float32)
        if pred["x_s"] is not None:
            arrays[prefix + "x_s"] = pred["x_s"].astype(np.float32)
        arrays[prefix + "emotion"] = table["emotion"].astype(str).to_numpy()[rows].astype(str)
        arrays[prefix + "speaker"] = speakers_all[rows].astype(str)
        arrays[prefix + "utterance_id"] = table["utterance_id"].astype(str).to_numpy()[
            rows].astype(str)
        arrays[prefix + "split"] = np.full(len(rows), name)
    atomic_save_npz(run_dir / "embeddings.npz", **arrays)
    atomic_torch_save(
        {"model": best["model"], "anchors": best["anchors"], "model_kwargs": kwargs,
         "normalizer": normalizer.state_dict(), "emotion_labels": emotion_labels,
         "speaker_labels": speaker_labels, "frame_stride": config.frame_stride,
         "max_frames": config.max_frames, "features": str(config.features),
         "selected_epoch": best["epoch"], "config": config.to_dict()},
        run_dir / "model.pt",
    )
    test_ua = [h["test_emotion_ua"] for h in history]
    best_test = int(np.nanargmax(test_ua)) if not all(map(math.isnan, test_ua)) else None
    metrics = {
        "config": config.to_dict(),
        "run_name": config.resolved_run_name,
        "fold": int(fold.index),
        "protocol": config.protocol,
        "selected_epoch": int(best["epoch"]),
        "selection": "highest validation emotion UA (earlier epoch on ties)"
        if len(fold.val) else "last epoch (the fold has no validation part)",
        "val": best["metrics"]["val"],
        "test": best["metrics"]["test"],
        "speaker_test": best["metrics"]["speaker_test"],
        "best_on_test": {
            "emotion_ua": None if best_test is None else float(test_ua[best_test]),
            "epoch": None if best_test is None else best_test + 1,
            "note": "optimistic: the epoch is chosen on the test set itself; report the "
                    "selected epoch's test metrics instead",
        },
        "n_train": int(len(train)),
        "n_train_fold": int(len(fold.train)),
        "n_val": int(len(fold.val)),
        "n_test": int(len(fold.test)),
        "n_speaker_test": int(len(fold.speaker_test)),
        "emotion_labels": emotion_labels,
        "speaker_labels": speaker_labels,
        "device": str(device),
        "epochs_trained": len(history),
        "seconds": round(elapsed + time.perf_counter() - final_t0, 3),
    }
    atomic_write_json(metrics_path, metrics)
    ckpt_path.unlink(missing_ok=True)
    return json.loads(metrics_path.read_text())


# --- re-embedding with a saved model ---------------------------------------------------------


def load_model(model_dir_or_run_dir: str | os.PathLike, device: str = "cpu"
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The selected model of a finished run (``model.pt`` or its folder) and its saved info
    (``normalizer`` state, ``emotion_labels``, ``speaker_labels``, ``frame_stride``, ...)."""
    from hcld_lib.models import DualBranchModel

    path = Path(model_dir_or_run_dir)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise HcldError(f"{path} does not exist: train the run first (training.train_run)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = DualBranchModel(**saved["model_kwargs"])
    model.load_state_dict(saved["model"])
    model.to(resolve_device(device)).eval()
    return model, saved


def embed(
    model_dir_or_run_dir: str | os.PathLike,
    cache: Any,
    rows: Sequence[int] | Sequence[str] | np.ndarray,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, np.ndarray | None]:
    """Embeddings of arbitrary cache rows with a saved model (the run's normaliser and pooling).

    Args:
        model_dir_or_run_dir: a run folder or its ``model.pt``.
        cache: a :class:`hcld_lib.features.FeatureCache` or its path.
        rows: positional rows of the cache, or utterance ids.
    Returns:
        ``dict(x_e [N, E] float32, x_s [N, E] float32 or None (EMO-only))``, in the order of
        ``rows``.
    """
    from hcld_lib.features import FeatureNormalizer, open_cache

    model, saved = load_model(model_dir_or_run_dir, device)
    if isinstance(cache, (str, os.PathLike)):
        cache = open_cache(cache)
    if int(cache.feature_dim) != int(saved["model_kwargs"]["input_dim"]):
        raise HcldError(f"the cache {cache.path} has {cache.feature_dim}-d features, the model in "
                        f"{model_dir_or_run_dir} expects {saved['model_kwargs']['input_dim']}")
    rows = list(rows)
    if rows and isinstance(rows[0], str):
        rows = [cache.row(r) for r in rows]
    rows_arr = np.asarray(rows, dtype=np.int64)
    normalizer = FeatureNormalizer.from_state_dict(saved["normalizer"])
    zeros = np.zeros(len(rows_arr), dtype=np.int64)
    ds = FeatureDataset(cache, rows_arr, normalizer, zeros, zeros, saved["frame_stride"],
                        saved["max_frames"])
    pred = _predict(model, ds, batch_size, next(model.parameters()).device)
    return {"x_e": pred["x_e"], "x_s": pred["x_s"]}
