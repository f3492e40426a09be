"""One run: a variant x architecture x fold x seed, from the feature cache to its results.

:func:`train_run` prepares the fold (:func:`hcld_lib.training.fold.prepare_fold`), builds the
model and the networks of its terms (:func:`build_model`), trains them with
:func:`hcld_lib.training.fit.fit` on batches of the positive-guaranteeing sampler, minimising
:func:`hcld_lib.method.terms.objective`, evaluates every epoch
(:mod:`hcld_lib.training.evaluate`) until the run's stop (:mod:`hcld_lib.training.stopping`),
and writes the selected epoch's results.

**Model selection** uses the fold's validation part (carved from its training part): the epoch with
the highest validation emotion UA, the earlier epoch on ties. The best test emotion UA over all
epochs is also reported, as ``best_on_test``, labelled optimistic (it peeks at the test set).

Files of a run, in ``out_dir/<run_name>/``: ``metrics.json`` (written last: its presence marks a
finished run, which is never trained again), ``history.csv`` and ``tb/`` (TensorBoard event files;
:mod:`hcld_lib.training.log`), ``embeddings.npz`` (the test part: X_e, X_s, labels, ids and
predicted emotions), ``model.pt``, and ``checkpoint.pt`` while the run is in flight (a killed run
resumes from it to exactly the same numbers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hcld_lib.data.labels import emotion_order
from hcld_lib.features.cache import FeatureCache, open_cache
from hcld_lib.features.normalizer import FeatureNormalizer
from hcld_lib.features.resident import FoldFeatures
from hcld_lib.io import (
    HcldError,
    atomic_save_npz,
    atomic_torch_save,
    atomic_write_json,
    ensure_writable_dir,
    load_torch,
    read_json,
    short_hash,
)
from hcld_lib.method.anchors import label_text_embeddings, label_words
from hcld_lib.method.models import DualBranchModel
from hcld_lib.method.sampler import ContrastiveBatchSampler
from hcld_lib.method.term import ModuleContext
from hcld_lib.method.terms import LOGGED, build_term_modules, objective
from hcld_lib.runtime import resolve_device, set_seed
from hcld_lib.training.config import RunConfig
from hcld_lib.training.evaluate import EVAL_BATCH, SPLITS, flat_metrics, predict, split_metrics
from hcld_lib.training.fit import Batches, FitResult, fit
from hcld_lib.training.fold import FoldData, prepare_fold
from hcld_lib.training.log import RunLog
from hcld_lib.training.stopping import SCORE, plateau_epoch, scores, should_stop

_REDO = "delete the run folder (or `make clean-runs`) and train the run again"
_WRITABLE: set[str] = set()  # runs folders this process has found writable


# --- the model -----------------------------------------------------------------------------------


def model_kwargs(config: RunConfig, data: FoldData, n_speakers: int | None = None
                 ) -> dict[str, Any]:
    """The arguments of :class:`DualBranchModel` for ``config`` on ``data``'s cache."""
    return dict(
        input_dim=int(data.cache.feature_dim), n_emotions=len(data.emotion_labels),
        n_speakers=len(data.speaker_labels) if n_speakers is None else n_speakers,
        emotion_arch=config.emotion_arch, speaker_arch=config.speaker_arch_resolved,
        embed_dim=config.embed_dim, hidden_dim=config.hidden_dim, n_layers=config.n_layers,
        dropout=config.dropout, n_heads=config.n_heads, n_layers_in=int(data.cache.n_layers),
        speaker_branch=config.speaker_branch, branches=config.branches,
    )


def load_pretrained(model: DualBranchModel, path: str | Path) -> None:
    """Load a cluster-pretrained emotion path (``training.pretrain``) into ``model``.

    Raises :class:`HcldError` naming the file when it is missing, unreadable or does not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise HcldError(f"init_emotion_encoder file {path} does not exist; pretrain first or fix "
                        "the path")
    saved = load_torch(path, what="the init_emotion_encoder file",
                       remedy="pretrain again (training.pretrain) or fix the path")
    try:
        model.load_emotion_state(saved["emotion_path"])
    except (KeyError, TypeError) as err:
        raise HcldError(f"init_emotion_encoder file {path} was not written by cluster "
                        f"pretraining (no emotion_path state): {err}") from err
    except RuntimeError as err:
        raise HcldError(
            f"init_emotion_encoder file {path} does not fit the emotion path of this run (arch, "
            f"branches, embed_dim, hidden_dim, n_layers and the features must match): {err}"
        ) from err


def build_model(config: RunConfig, data: FoldData) -> tuple[DualBranchModel, nn.ModuleDict]:
    """The two-branch model (seeded by ``config.seed`` through :func:`set_seed` beforehand) and
    the networks its terms train (label anchors, an adversary, ...), by term name
    (:func:`hcld_lib.method.terms.build_term_modules`: seeded apart, so they change no initial
    weight of the model)."""
    model = DualBranchModel(**model_kwargs(config, data))
    context = ModuleContext(config.embed_dim, len(data.emotion_labels), len(data.speaker_labels),
                            tuple(data.emotion_labels))
    return model, build_term_modules(config.settings(), context, config.seed)


def prepare_shared(configs: list[RunConfig]) -> None:
    """Compute once, here, what the runs of ``configs`` would each compute first: the label-word
    embeddings of their text encoders (:func:`hcld_lib.method.anchors.label_text_embeddings`
    writes them to this machine's cache, where every run of the machine then reads them)."""
    done: set[tuple[str, str]] = set()
    for c in configs:
        key = (c.features, c.lcl_text_encoder)
        if c.features and c.w_lcl > 0 and c.lcl_text_encoder != "learned" and key not in done:
            done.add(key)
            labels = emotion_order(open_cache(c.features).table["emotion"])
            label_text_embeddings(c.lcl_text_encoder, label_words(labels))


def _progress_line(config: RunConfig, row: dict[str, Any]) -> str:
    """One compact line per epoch: loss, emotion UA on val and test, speaker UA."""

    def pct(key: str) -> str:
        v = row.get(key, float("nan"))
        return "  -  " if math.isnan(v) else f"{100 * v:5.1f}"

    spk_split = "test" if config.protocol == "paper" else "speaker_test"
    return (f"[{config.resolved_run_name}] ep {row['epoch']:3d}/{config.max_epochs} "
            f"loss {row['loss']:.3f}  val UA {pct('val_emotion_ua')}  "
            f"test UA {pct('test_emotion_ua')}  spk UA {pct(spk_split + '_speaker_ua')}")


# --- how long -------------------------------------------------------------------------------------


def stopping_settings(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`hcld_lib.training.stopping.should_stop` for ``config``."""
    return dict(max_epochs=config.max_epochs, stop_at_plateau=config.stop_at_plateau,
                patience=config.patience, window=config.plateau_window,
                min_epochs=config.min_epochs)


def training_length(config: RunConfig, history: list[dict[str, Any]], stopped_early: bool,
                    score: str = SCORE, lower_is_better: bool = False) -> dict[str, Any]:
    """How long the run trained and why it stopped: ``epochs_trained``, ``stop_reason``
    (``"plateau"`` or ``"max_epochs"``), ``plateau_epoch`` (the first epoch at which the plateau
    rule held on the column ``score``, ``None`` if it never did) and ``converged`` (it did)."""
    plateau = plateau_epoch(scores(history, score, lower_is_better), config.patience,
                            config.plateau_window)
    return {"epochs_trained": len(history),
            "stop_reason": "plateau" if stopped_early else "max_epochs",
            "plateau_epoch": plateau, "converged": plateau is not None}


# --- the run -------------------------------------------------------------------------------------


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}



class RunTask:
    """What :func:`fit` trains for one run: the sampler's batches over the labelled training
    rows, the model's forward pass, the objective (:func:`hcld_lib.method.terms.objective` with
    the run's weights and its terms' networks) and the evaluation of every part (columns: WA /
    UA and the emotion loss; score: validation emotion UA; payload: :func:`split_metrics` of
    :data:`SPLITS`)."""

    def __init__(self, config: RunConfig, data: FoldData, model: DualBranchModel,
                 modules: nn.ModuleDict, features: FoldFeatures, device: torch.device) -> None:
        self.config, self.data, self.model, self.modules = config, data, model, modules
        self.features, self.device = features, device
        self.settings = config.settings()
        self.emotion = torch.tensor(data.emotion, device=device)
        self.speaker = torch.tensor(data.speaker, device=device)
        self.sampler = ContrastiveBatchSampler(data.emotion[data.train], data.speaker[data.train],
                                               config.batch_size, seed=config.seed,
                                               need=config.sampler_needs)
        self.same_test = np.array_equal(data.fold.test, data.fold.speaker_test)

    def _batch(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(self.data.train[positions], device=self.device)
        x, lengths = self.features.gather(rows)
        return {"x": x, "lengths": lengths, "emotion": self.emotion[rows],
                "speaker": self.speaker[rows]}

    def batches(self, epoch: int) -> Batches:
        return Batches(self.sampler.batches(epoch), self._batch)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        return self.model(batch["x"], batch["lengths"])

    def loss(self, out: dict[str, torch.Tensor | None], batch: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return objective(out, batch["emotion"], batch["speaker"], self.settings, self.modules,
                         progress=batch.get("progress", 0.0))

    def evaluate(self, epoch: int) -> tuple[dict[str, float], float | None, dict[str, Any]]:
        metrics: dict[str, Any] = {}
        for name in SPLITS:
            if name == "speaker_test" and self.same_test:
                metrics[name] = metrics["test"]
                continue
            rows = self.data.split_rows(name)
            pred = predict(self.model, self.features, rows, EVAL_BATCH)
            with_speaker = not (name == "test" and self.config.protocol == "loso")
            metrics[name] = split_metrics(pred, self.data.emotion[rows], self.data.speaker[rows],
                                          self.data, with_speaker)
        columns = {k: v for name, m in metrics.items() for k, v in flat_metrics(name, m).items()}
        val = metrics["val"]["emotion"]
        return columns, (val["ua"] if val else None), metrics


def train_run(
    config: RunConfig,
    verbose: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run and write its results to ``config.out_dir/<config.resolved_run_name>/``.

    Args:
        config: the run (see :class:`hcld_lib.training.config.RunConfig`).
        verbose: print one compact line per epoch.
        on_epoch_end: called as ``on_epoch_end(epoch, history_row)`` after each epoch (epochs
            count from 1).
    Returns:
        The content of ``metrics.json``: ``config``, ``result_key``, ``run_name``, ``fold``,
        ``protocol``, ``selected_epoch``, ``val`` / ``test`` / ``speaker_test`` (each
        ``{"emotion": metrics, "speaker": metrics or None, "n": N}``, metrics from
        :func:`hcld_lib.analysis.metrics.classification_metrics`), ``best_on_test``
        (optimistic), ``n_train`` / ``n_val`` / ``n_test`` / ``n_speaker_test``,
        ``emotion_labels``, ``speaker_labels``, ``seconds``. A finished run is returned at once.
    Raises:
        HcldError: the run folder holds a run with other settings (finished, or in training by
            another process), or bad settings. Another process training this very run is
            waited for, and its metrics returned.
    """
    finished = _finished_metrics(config)
    if finished is not None:
        return finished
    if config.out_dir not in _WRITABLE:  # once per folder and process (it writes a probe file)
        ensure_writable_dir(config.out_dir, "the runs folder (RunConfig.out_dir)")
        _WRITABLE.add(config.out_dir)
    with _run_lock(config):
        finished = _finished_metrics(config)  # another process may have just finished it
        return finished if finished is not None else _train(config, verbose, on_epoch_end)


def _finished_metrics(config: RunConfig) -> dict[str, Any] | None:
    """The metrics of the run when it has finished (a finished run is never trained again),
    else ``None``; a finished run of other settings in its folder is refused."""
    metrics_path = config.run_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    metrics = read_json(metrics_path, what="a finished run's metrics", remedy=_REDO)
    if metrics.get("result_key") != json.loads(json.dumps(config.result_key())):
        raise HcldError(f"{config.run_dir} holds a finished run with other settings than this "
                        "one; delete the folder (or `make clean-runs`) to train this run")
    (config.run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


@contextlib.contextmanager
def _run_lock(config: RunConfig) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while the run trains (an advisory lock the system releases when
    the process ends, however it ends). Another process training the same run (the same
    settings: two chapters of a batch that share a run) is waited for; one training other
    settings in the same folder is refused, as the two would overwrite each other's files."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    key = short_hash(config.result_key(), 16)
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid, _, holder_key = handle.read().strip().partition(" ")
            if holder_key != key:
                raise HcldError(
                    f"{run_dir} is being trained by another process now (pid {pid or '?'}) with "
                    "other settings; two runs of one folder at once would overwrite each other: "
                    "wait for it, or give this run another out_dir or run_name") from None
            fcntl.flock(handle, fcntl.LOCK_EX)  # the same run: wait for it to finish
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {key}")
        handle.flush()
        yield


def _train(config: RunConfig, verbose: bool,
           on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
    """:func:`train_run` of a run that has not finished (its lock held)."""
    run_dir = config.run_dir
    ckpt_path = run_dir / "checkpoint.pt"
    set_seed(config.seed)
    device = resolve_device(config.device)
    data = prepare_fold(config)
    model, modules = build_model(config, data)
    module = nn.ModuleDict({"model": model, "terms": modules})
    module.to(device)
    if config.init_emotion_encoder and not ckpt_path.is_file():
        load_pretrained(model, config.init_emotion_encoder)

    task = RunTask(config, data, model, modules, data.features(device), device)
    logs: list[RunLog] = []

    def start_log(history: list[dict[str, Any]]) -> None:  # the epochs a checkpoint holds
        logs.append(RunLog(run_dir, history, config.checkpoint_every,
                           (lambda row: _progress_line(config, row)) if verbose else None,
                           on_epoch_end))

    result = fit(
        module, task.batches, task.forward, task.loss, epochs=config.max_epochs, lr=config.lr,
        warmup_epochs=config.warmup_epochs, weight_decay=config.weight_decay, terms=LOGGED,
        evaluate=task.evaluate, checkpoint=ckpt_path, checkpoint_every=config.checkpoint_every,
        identity=config.result_key(), on_start=start_log,
        on_epoch_end=lambda row: logs[0].epoch(row), device=device, amp=config.amp,
        stop=lambda history: should_stop(history, **stopping_settings(config)),
    )
    logs[0].close(result.best_epoch)
    module.load_state_dict(result.best_state)
    return _export(config, data, module, result, task, run_dir)


def _export(config: RunConfig, data: FoldData, module: nn.ModuleDict, result: FitResult,
            task: RunTask, run_dir: Path) -> dict[str, Any]:
    """Write the selected epoch's embeddings, model and metrics (metrics.json last); ``module``
    holds the selected epoch's state."""
    model = module["model"]
    arrays: dict[str, np.ndarray] = {}
    parts = [("", "test")] + ([] if task.same_test else [("spk_", "speaker_test")])
    for prefix, name in parts:
        rows = data.split_rows(name)
        if len(rows) == 0:
            continue
        pred = predict(model, task.features, rows, EVAL_BATCH)
        arrays[prefix + "x_e"] = pred["x_e"].astype(np.float32)
        if pred["x_s"] is not None:
            arrays[prefix + "x_s"] = pred["x_s"].astype(np.float32)
        for column in ("emotion", "speaker", "utterance_id"):
            arrays[prefix + column] = data.table[column].astype(str).to_numpy()[rows].astype(str)
        arrays[prefix + "emotion_pred"] = np.asarray(data.emotion_labels)[pred["emotion_pred"]]
        arrays[prefix + "split"] = np.full(len(rows), name)
    atomic_save_npz(run_dir / "embeddings.npz", **arrays)
    normalizer = {k: torch.from_numpy(v) for k, v in data.normalizer.state_dict().items()}
    atomic_torch_save(
        {"model": _cpu(model.state_dict()),
         "terms": {name: _cpu(m.state_dict()) for name, m in module["terms"].items()},
         "model_kwargs": model_kwargs(config, data), "normalizer": normalizer,
         "emotion_labels": data.emotion_labels, "speaker_labels": data.speaker_labels,
         "frame_stride": config.frame_stride, "max_frames": config.max_frames,
         "features": str(config.features), "selected_epoch": result.best_epoch,
         "config": config.to_dict()},
        run_dir / "model.pt",
    )
    fold = data.fold
    best = result.best_payload
    test_ua = [h["test_emotion_ua"] for h in result.history]
    best_test = int(np.nanargmax(test_ua)) if not all(map(math.isnan, test_ua)) else None
    metrics = {
        "config": config.to_dict(), "result_key": config.result_key(),
        "run_name": config.resolved_run_name, "fold": int(fold.index), "protocol": config.protocol,
        "speaker_branch": config.speaker_branch,
        "selected_epoch": result.best_epoch,
        "selection": "highest validation emotion UA (earlier epoch on ties)"
        if len(fold.val) else "last epoch (the fold has no validation part)",
        "val": best["val"], "test": best["test"], "speaker_test": best["speaker_test"],
        "best_on_test": {
            "emotion_ua": None if best_test is None else float(test_ua[best_test]),
            "epoch": None if best_test is None else best_test + 1,
            "note": "optimistic: the epoch is chosen on the test set itself; report the "
                    "selected epoch's test metrics instead",
        },
        "n_train": int(len(data.train)), "n_train_fold": int(len(fold.train)),
        "n_val": int(len(fold.val)), "n_test": int(len(fold.test)),
        "n_speaker_test": int(len(fold.speaker_test)),
        "emotion_labels": data.emotion_labels, "speaker_labels": data.speaker_labels,
        "device": str(task.device), "seconds": round(result.seconds, 3),
        **training_length(config, result.history, result.stopped_early),
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return read_json(run_dir / "metrics.json", what="a finished run's metrics", remedy=_REDO)


# --- a saved model -------------------------------------------------------------------------------


def load_model(run: str | Path, device: str = "cpu") -> tuple[DualBranchModel, dict[str, Any]]:
    """The selected model of a finished run (its folder or ``model.pt``) and its saved info
    (``normalizer`` state, ``emotion_labels``, ``speaker_labels``, ``frame_stride``, ...)."""
    path = Path(run)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise HcldError(f"{path} does not exist: train the run first (train_run)")
    saved = load_torch(path, keys=("model", "model_kwargs", "normalizer", "frame_stride",
                                   "max_frames"), what="a run's model file",
                       remedy="delete the run folder and train the run again")
    model = DualBranchModel(**saved["model_kwargs"])
    try:
        model.load_state_dict(saved["model"])
    except (RuntimeError, TypeError) as err:
        raise HcldError(f"{path} does not hold the model its model_kwargs describe ({err}); "
                        "delete the run folder and train the run again") from err
    model.to(resolve_device(device)).eval()
    return model, saved


def embed(run: str | Path, cache: FeatureCache | str | Path,
          rows: list[int] | list[str] | np.ndarray, batch_size: int = 64, device: str = "cpu"
          ) -> dict[str, np.ndarray | None]:
    """X_e and X_s of any cache rows (positions or utterance ids) with a finished run's model,
    normaliser and pooling: ``dict(x_e [N, E], x_s [N, E] or None)`` in the order of ``rows``."""
    model, saved = load_model(run, device)
    if not isinstance(cache, FeatureCache):
        cache = open_cache(cache)
    if int(cache.feature_dim) != int(saved["model_kwargs"]["input_dim"]):
        raise HcldError(f"the cache {cache.path} has {cache.feature_dim}-d features, the model in "
                        f"{run} expects {saved['model_kwargs']['input_dim']}")
    rows = list(rows)
    if rows and isinstance(rows[0], str):
        rows = [cache.row(r) for r in rows]
    normalizer = FeatureNormalizer.from_state_dict(saved["normalizer"])
    features = FoldFeatures(cache, np.asarray(rows, dtype=np.int64), normalizer,
                            saved["frame_stride"], saved["max_frames"],
                            next(model.parameters()).device)
    pred = predict(model, features, np.arange(len(rows)), batch_size)
    return {"x_e": pred["x_e"], "x_s": pred["x_s"]}
