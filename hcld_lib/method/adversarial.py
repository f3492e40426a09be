"""Adversarial speaker removal by gradient reversal (Ganin & Lempitsky 2015, DANN-style).

A speaker classifier ``A`` (the adversary) reads X_e through a layer that is the identity on the
way forward and multiplies the gradient by ``-lambda`` on the way back::

    L_adv = CE(A(R_lambda(X_e)), s)          R_lambda(x) = x,   dR_lambda/dx = -lambda I
    lambda(p) = lambda_max (2 / (1 + exp(-10 p)) - 1)     schedule "ramp", p = training done
    lambda(p) = lambda_max                                 schedule "fixed"

Minimising ``w_adversarial * L_adv`` trains ``A`` to tell the speakers apart from X_e while the
reversed gradient trains the emotion encoder to make that impossible: speaker information is
removed from X_e. The logged ``loss_adversarial`` is the adversary's cross-entropy (it stays high
when X_e holds little speaker information). The ``adversarial`` variant pairs it with the speaker
task on X_s, so the speaker branch still learns the speakers.

Shapes: ``B`` batch size, ``E`` embedding size, ``S`` number of training speakers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcld_lib.io import HcldError
from hcld_lib.method.term import ModuleContext, Setting, Settings, Term, TermInputs

SCHEDULES: tuple[str, ...] = ("ramp", "fixed")


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # noqa: ANN001 - autograd's ctx
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return -ctx.scale * grad, None


def reverse_gradient(x: Tensor, scale: float) -> Tensor:
    """``R_scale(x)``: ``x`` unchanged forward; the gradient times ``-scale`` backward."""
    if not math.isfinite(scale) or scale < 0:
        raise HcldError(f"reverse_gradient: scale={scale} must be finite and >= 0")
    return _GradientReversal.apply(x, float(scale))


def reversal_scale(progress: float, maximum: float = 1.0, schedule: str = "ramp") -> float:
    """``lambda(p)`` of the module docstring, for ``p = progress`` clipped to [0, 1]."""
    if schedule not in SCHEDULES:
        raise HcldError(f"adversarial_schedule={schedule!r} is not one of {SCHEDULES}")
    if schedule == "fixed":
        return float(maximum)
    p = min(max(float(progress), 0.0), 1.0)
    return float(maximum) * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class SpeakerAdversary(nn.Module):
    """The speaker classifier on X_e: ``[B, E] -> [B, S]`` logits, one hidden layer of ``E``."""

    def __init__(self, embed_dim: int, n_speakers: int) -> None:
        super().__init__()
        if n_speakers < 2:
            raise HcldError(f"the speaker adversary needs at least 2 training speakers, got "
                            f"{n_speakers}")
        self.net = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(),
                                 nn.Linear(embed_dim, n_speakers))

    def forward(self, x_e: Tensor) -> Tensor:
        return self.net(x_e)


def adversarial_loss(x_e: Tensor, speaker: Tensor, adversary: nn.Module, scale: float) -> Tensor:
    """``L_adv = CE(A(R_scale(x_e)), speaker)`` for ``x_e [B, E]``, ``speaker [B]``: scalar."""
    if x_e.shape[0] != speaker.shape[0]:
        raise HcldError(f"adversarial_loss: x_e {tuple(x_e.shape)} and speaker "
                        f"{tuple(speaker.shape)} disagree on the batch size")
    return F.cross_entropy(adversary(reverse_gradient(x_e, scale)), speaker)


def _adversarial(i: TermInputs) -> dict[str, Tensor]:
    s = i.settings
    scale = reversal_scale(i.progress, s["adversarial_lambda"], s["adversarial_schedule"])
    return {"adversarial": adversarial_loss(i.out["x_e"], i.speaker, i.module, scale)}


def _adversary(ctx: ModuleContext, s: Settings) -> SpeakerAdversary:
    return SpeakerAdversary(ctx.embed_dim, ctx.n_speakers)


TERM = Term(
    "adversarial", "adversarial speaker removal: a speaker classifier on reversed X_e",
    _adversarial,
    sides=lambda s: {"x_e": ("adversarial_lambda", "adversarial_schedule")},
    settings=(
        Setting("adversarial_lambda", 1.0, "the largest gradient-reversal scale lambda",
                low=0.0),
        Setting("adversarial_schedule", "ramp", "'ramp': lambda rises as 2 / (1 + exp(-10 p)) "
                "- 1 over the share p of max_epochs done; 'fixed': lambda throughout",
                kind=str, choices=SCHEDULES),
    ),
    module=_adversary,
)
