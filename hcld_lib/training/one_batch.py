"""The method on one batch: what the objective sees and computes for one real batch of a run.

:func:`one_batch` takes the first batch the run's sampler makes (epoch 0), passes it through the
run's model as initialised (or as a finished run left it), and returns everything a reader needs
to follow the method step by step: the labels, the ICLD pair masks
(:func:`hcld_lib.method.losses.speaker_emotion_pairs`), the embeddings, every term's value from
:func:`hcld_lib.method.terms.objective`, and which parameters each term's gradient reaches
(:func:`gradient_reach`), so that the notebook can recompute each value from its equation and
show how the branches layout decides what a term can change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from hcld_lib.method.losses import speaker_emotion_pairs
from hcld_lib.method.terms import active_terms, term_loss
from hcld_lib.runtime import set_seed
from hcld_lib.training.config import RunConfig
from hcld_lib.training.fold import FoldData, prepare_fold
from hcld_lib.training.run import RunTask, build_model


@dataclass
class OneBatch:
    """One batch of a run, as the objective sees it (see the module docstring)."""

    config: RunConfig
    data: FoldData
    emotion: Tensor
    """``[B]`` emotion indices (``data.emotion_labels``)."""
    speaker: Tensor
    """``[B]`` training-speaker indices (``data.speaker_labels``)."""
    positive: Tensor
    """``[B, B]`` ICLD positive pairs: same speaker, different emotion."""
    negative: Tensor
    """``[B, B]`` ICLD negative pairs: different speaker, same emotion."""
    out: dict[str, Tensor | None]
    """The model's outputs: ``x_e``, ``x_s`` ``[B, E]``, the logits."""
    values: dict[str, float]
    """Every value the objective logs for this batch, and ``loss``: the weighted total."""
    task: RunTask
    model: nn.Module
    modules: nn.ModuleDict
    inputs: dict[str, Any]
    """The batch as the model takes it (``x``, ``lengths``, labels)."""

    def labels(self) -> pd.DataFrame:
        """The batch's utterances: ``emotion`` and ``speaker`` labels, in batch order."""
        return pd.DataFrame({
            "emotion": np.asarray(self.data.emotion_labels)[self.emotion.numpy()],
            "speaker": np.asarray(self.data.speaker_labels)[self.speaker.numpy()]})


def one_batch(config: RunConfig, index: int = 0) -> OneBatch:
    """The ``index``-th batch of epoch 0 of ``config``'s run through its freshly initialised
    model (the run's seed), with every term the objective computes on it."""
    set_seed(config.seed)
    data = prepare_fold(config)
    model, modules = build_model(config, data)
    task = RunTask(config, data, model, modules, data.features("cpu"), torch.device("cpu"))
    batch = list(task.batches(0))[index]
    model.eval()  # no dropout: the values below are the method's, not a random draw's
    out = task.forward(batch)
    total, terms = task.loss(out, batch)
    positive, negative = speaker_emotion_pairs(batch["emotion"], batch["speaker"])
    values = {k: float(v.detach()) for k, v in terms.items()} | {"loss": float(total.detach())}
    return OneBatch(config, data, batch["emotion"].cpu(), batch["speaker"].cpu(), positive,
                    negative, {k: (v.detach() if isinstance(v, Tensor) else v)
                               for k, v in out.items()}, values, task, model, modules, batch)


def _parameter_groups(model: nn.Module, modules: nn.ModuleDict) -> dict[str, list[Tensor]]:
    groups = {n: list(m.parameters()) for n, m in model.named_children()}
    groups |= {f"{name} (its own network)": list(m.parameters()) for name, m in modules.items()}
    return {n: p for n, p in groups.items() if p}


def gradient_reach(batch: OneBatch) -> pd.DataFrame:
    """Which parameters each active term's gradient reaches on this batch: one row per term (its
    weighted value) and per logged part of it (``icld: icld_neg``, unweighted), one column per
    parameter group of the model (and of the terms' own networks); each cell the gradient's L2
    norm (0 where the term cannot reach)."""
    groups = _parameter_groups(batch.model, batch.modules)
    rows: dict[str, dict[str, Any]] = {}
    settings = batch.config.settings()
    params = [p for ps in groups.values() for p in ps]
    for term in active_terms(settings):
        out = batch.task.forward(batch.inputs)  # a fresh graph per term
        value, got = term_loss(term, out, batch.inputs["emotion"], batch.inputs["speaker"],
                               settings, batch.modules)
        parts = {term.name: value} | {f"{term.name}: {p}": got[p] for p in term.parts}
        for row, scalar in parts.items():
            grads = torch.autograd.grad(scalar, params, allow_unused=True, retain_graph=True)
            norms, i = {}, 0
            for name, ps in groups.items():
                g = [x for x in grads[i:i + len(ps)] if x is not None]
                norms[name] = float(torch.sqrt(sum((x ** 2).sum() for x in g))) if g else 0.0
                i += len(ps)
            rows[row] = norms
    return pd.DataFrame.from_dict(rows, orient="index").fillna(0.0)
