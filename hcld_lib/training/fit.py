"""The one training loop: every run and every pretraining goes through :func:`fit`.

::

    for epoch in start..E-1, until stop(history):
        for step, batch in enumerate(batches(epoch)):          # deterministic from (seed, epoch)
            lr_t = lr * min(1, (epoch + (step + 1) / steps) / warmup_epochs)   # linear warm-up
            out  = forward(batch)                               # under autocast when amp
            L, terms = loss(out, batch)                         # always in float32
            Adam step on L
        row = {epoch, lr, loss, loss_<term>...} + evaluate(epoch)
        keep the module's state when evaluate's score is the best so far (the earlier on ties)
        every ``checkpoint_every`` epochs and after the last (or stopping) one: the checkpoint

**Schedule** (the paper's, by default): Adam (its fused implementation); the learning rate
rises linearly over the first ``warmup_epochs`` epochs, step by step, then stays constant (the
paper states no decay). The schedule is a pure function of (epoch, step), so a resumed run needs
no scheduler state.

**Resumption.** The checkpoint (module, optimiser, the Python / NumPy / torch RNG states,
history, best state, the run's identity) is written atomically. Batches depend only on
``(seed, epoch)``, so a run killed at any point and started again continues from its last
checkpoint and ends with exactly the numbers of an uninterrupted run. A checkpoint whose identity
differs from the run's is refused.

**Mixed precision** (``amp=True`` on CUDA): the forward pass runs under ``torch.autocast`` in
bfloat16 where the GPU supports it (else float16 with a gradient scaler); the model's outputs are
cast to float32 before the loss terms, so every loss is computed in float32.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hcld_lib.io import HcldError, atomic_torch_save, load_torch

CHECKPOINT_KEYS: tuple[str, ...] = ("identity", "epoch", "module", "optimizer", "rng", "history",
                                    "best", "seconds")
"""What a resumable checkpoint holds."""

Batch = dict[str, Any]
Evaluation = tuple[dict[str, float], float | None, Any]
"""What ``evaluate(epoch)`` returns: columns for the history row, the selection score (higher is
better; ``None`` = no selection, keep the last epoch) and any payload to keep with the best."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch history and the selected epoch's state."""

    history: list[dict[str, Any]]
    best_epoch: int
    """The selected epoch (1-based): the best score, the earlier on ties; the last without one."""
    best_state: dict[str, Tensor]
    best_payload: Any
    seconds: float
    stopped_early: bool = False
    """``stop`` ended the run before ``epochs``."""


class Batches:
    """An epoch's batches, made one at a time: ``make(indices)`` for each list of ``indices``."""

    def __init__(self, indices: Sequence[Any], make: Callable[[Any], Batch]) -> None:
        self.indices, self.make = indices, make

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):  # noqa: ANN204 - a generator of batches
        return (self.make(i) for i in self.indices)


def _state_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    """The random states as tensors, numbers and lists (readable with ``weights_only``)."""
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(keys), gauss],
             "numpy": [kind, torch.from_numpy(mt.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _float32(out: dict[str, Tensor | None]) -> dict[str, Tensor | None]:
    return {k: (v.float() if isinstance(v, Tensor) and v.is_floating_point() else v)
            for k, v in out.items()}


def _resume(
    checkpoint: Path | None,
    identity: dict[str, Any] | None,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> tuple[list[dict[str, Any]], dict[str, Any], int, float]:
    """``(history, best, start epoch, seconds)`` of ``checkpoint``, with ``module``, ``optimizer``
    and the RNGs restored from it; a fresh start when there is none. Raises :class:`HcldError`
    for a checkpoint whose identity is not ``identity``."""
    best = {"epoch": 0, "score": -math.inf, "state": None, "payload": None}
    if checkpoint is None or not checkpoint.is_file():
        return [], best, 0, 0.0
    remedy = "delete it (or the run folder) to start this run afresh"
    ckpt = load_torch(checkpoint, keys=CHECKPOINT_KEYS, what="a run's resumable checkpoint",
                      remedy=remedy)
    if ckpt["identity"] != identity:
        raise HcldError(f"{checkpoint} belongs to a different run; {remedy}")
    try:
        module.load_state_dict(ckpt["module"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise HcldError(f"{checkpoint} does not fit this run ({type(err).__name__}: {err}); "
                        f"{remedy}") from err
    return ckpt["history"], ckpt["best"], int(ckpt["epoch"]), float(ckpt["seconds"])


def _save_checkpoint(
    checkpoint: Path,
    identity: dict[str, Any] | None,
    epochs_done: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    seconds: float,
) -> None:
    """Write everything :func:`_resume` needs after ``epochs_done`` epochs (atomically)."""
    atomic_torch_save(
        {"identity": identity, "epoch": epochs_done, "module": _state_copy(module),
         "optimizer": optimizer.state_dict(), "rng": _rng_state(), "history": history,
         "best": best, "seconds": seconds},
        checkpoint,
    )


def _train_epoch(
    epoch: int,
    epoch_batches: Collection[Batch],
    forward: Callable[[Batch], dict[str, Tensor | None]],
    loss: Callable[[dict[str, Tensor | None], Batch], tuple[Tensor, dict[str, Any]]],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    lr: float,
    warmup_epochs: int,
    terms: Sequence[str],
    device: torch.device,
    cast: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    """One pass over ``epoch_batches`` of ``epoch`` (0-based): an optimiser step per batch at
    the warm-up learning rate ``lr_t`` (module docstring).

    Returns:
        The epoch's history row ``{epoch (1-based), lr (the last lr_t), loss,
        loss_<term>...}``, losses averaged over the steps.
    Raises:
        HcldError: a non-finite loss, naming epoch, step and terms.
    """
    sums: dict[str, float] = {}
    n_steps = 0
    lr_t = lr
    for step, batch in enumerate(epoch_batches):
        if warmup_epochs > 0:
            lr_t = lr * min(1.0, (epoch + (step + 1) / len(epoch_batches)) / warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr_t
        batch = {**batch, "progress": (epoch + (step + 1) / len(epoch_batches)) / epochs}
        with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
            out = forward(batch)
        total, values = loss(_float32(out) if cast is not None else out, batch)
        if not torch.isfinite(total):
            raise _non_finite(epoch, step, values, batch, lr_t)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v)
        n_steps += 1
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr_t,
                           "loss": sums.get("loss", 0.0) / max(n_steps, 1)}
    for term in terms:
        row[f"loss_{term}"] = sums[term] / n_steps if term in sums else float("nan")
    return row


def _non_finite(epoch: int, step: int, values: dict[str, Any], batch: Batch, lr: float
                ) -> HcldError:
    """The error of a non-finite loss, blaming the data when the batch itself is not finite."""
    shown = {k: float(v) for k, v in values.items()}
    bad = [k for k, v in batch.items() if isinstance(v, Tensor) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    where = f"non-finite loss at epoch {epoch + 1} step {step} ({shown})"
    if bad:
        return HcldError(f"{where}: the batch's {bad} hold NaN or infinite values, so the data "
                         "is at fault, not the training: check the feature cache (python -m "
                         "hcld_lib.features verify <cache>) and the audio it came from")
    return HcldError(f"{where}: the inputs are finite, so training diverged: lower lr (now "
                     f"{lr:g}) or the weights of the loss terms")


def _evaluate(module: nn.Module, evaluate: Callable[[int], Evaluation] | None, epoch: int
              ) -> Evaluation:
    """``evaluate(epoch)`` in eval mode without gradients (``module`` back in train mode
    after); ``({}, None, None)`` without ``evaluate``."""
    if evaluate is None:
        return {}, None, None
    module.eval()
    with torch.no_grad():
        columns, score, payload = evaluate(epoch)
    module.train()
    return columns, score, payload


def fit(
    module: nn.Module,
    batches: Callable[[int], Collection[Batch]],
    forward: Callable[[Batch], dict[str, Tensor | None]],
    loss: Callable[[dict[str, Tensor | None], Batch], tuple[Tensor, dict[str, Any]]],
    *,
    epochs: int,
    lr: float,
    warmup_epochs: int = 0,
    weight_decay: float = 0.0,
    terms: Sequence[str] = (),
    evaluate: Callable[[int], Evaluation] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 1,
    identity: dict[str, Any] | None = None,
    on_start: Callable[[list[dict[str, Any]]], None] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    stop: Callable[[list[dict[str, Any]]], bool] | None = None,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> FitResult:
    """Train every parameter of ``module`` with Adam; return the history and the best state.

    Args:
        module: all that is trained (a model, or an ``nn.ModuleDict`` of several parts).
        batches: ``batches(epoch)`` (0-based) -> the epoch's batches (with a length), the same
            for the same epoch.
        forward: ``forward(batch)`` -> the model's outputs (a dict of tensors).
        loss: ``loss(outputs, batch)`` -> ``(L, {term: value})``; values may be tensors or floats.
        epochs, lr, warmup_epochs, weight_decay: the schedule (module docstring).
        terms: the term names logged per epoch as ``loss_<term>`` (unweighted means over the
            epoch's batches; NaN for a term the loss did not return).
        evaluate: ``evaluate(epoch)`` (1-based) after each epoch, in eval mode, see
            :data:`Evaluation`; ``None``: no evaluation, the last epoch is kept.
        checkpoint: where the resumable checkpoint goes (``None``: no checkpoint); it is
            written every ``checkpoint_every`` epochs and after the last, and read on start.
        identity: what the checkpoint must match to be resumed (e.g. the run's settings).
        on_start: called once before training with the history rows a resumed checkpoint
            holds (``[]`` for a fresh start).
        on_epoch_end: called with each epoch's history row.
        stop: ``stop(history)`` after each epoch (and before the first epoch of a resumed run):
            ``True`` ends training there (a pure function of the history, so a resumed run stops
            at the same epoch); ``None``: train all ``epochs``.
        device: where ``module`` lives. amp: mixed precision on CUDA.
    Raises:
        HcldError: a non-finite loss (naming epoch, step and terms), or a checkpoint of another
            run.
    """
    device = torch.device(device)
    # the fused kernel updates every parameter in one call (CPU and CUDA)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    cast = _autocast_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda") if cast == torch.float16 else None
    history, best, epoch, elapsed = _resume(checkpoint, identity, module, optimizer)
    if on_start is not None:
        on_start(list(history))
    module.train()

    def stopping() -> bool:
        return stop is not None and stop(history)

    stopped_early = epoch < epochs and stopping()  # a resumed run may have stopped already
    while epoch < epochs and not stopped_early:
        t0 = time.perf_counter()
        row = _train_epoch(epoch, batches(epoch), forward, loss, optimizer, epochs=epochs, lr=lr,
                           warmup_epochs=warmup_epochs, terms=terms, device=device, cast=cast,
                           scaler=scaler)
        columns, score, payload = _evaluate(module, evaluate, epoch + 1)
        row.update(columns)
        elapsed += time.perf_counter() - t0
        row["seconds"] = elapsed
        history.append(row)
        if score is None or score > best["score"]:
            best = {"epoch": epoch + 1, "score": -math.inf if score is None else score,
                    "state": _state_copy(module), "payload": payload}
        epoch += 1
        stopped_early = epoch < epochs and stopping()
        if checkpoint is not None and (epoch % checkpoint_every == 0 or epoch == epochs
                                       or stopped_early):
            _save_checkpoint(checkpoint, identity, epoch, module, optimizer, history, best,
                             elapsed)
        if on_epoch_end is not None:
            on_epoch_end(row)
    if not history:
        raise HcldError(f"epochs={epochs}: nothing to train")
    return FitResult(history, int(best["epoch"]), best["state"], best["payload"], elapsed,
                     stopped_early)
