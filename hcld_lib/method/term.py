"""What a term of the objective declares, once: :class:`Term` and the :class:`Setting` it reads.

A term is one summand of the loss a run minimises, ``w_<name> * value``. Its declaration holds
everything the rest of the package needs to know about it, so that nothing else lists terms:

- ``compute``: the function of the model's outputs and the batch's labels (its equation and
  shapes are in that function's docstring);
- its weight, the :class:`~hcld_lib.training.config.RunConfig` field ``w_<name>``, and the
  ``settings`` it owns (also ``RunConfig`` fields, with their defaults and allowed values) or
  reads from another term (``reads``);
- ``sides``: which embedding its gradient reaches (``"x_e"``, ``"x_s"``) and which settings
  decide that; ``couples``: whether its value mixes X_e and X_s in one expression (so the
  speaker branch shapes X_e's gradient); a run whose active terms have an ``x_s`` side gets a
  speaker branch;
- ``positives``: the kinds of positive pairs its batches must hold (the sampler's needs);
- ``module``: an extra network it trains (label anchors, an adversary, a variational
  estimator), built once per run;
- ``parts``: values logged beside it (``loss_<part>``), and ``fitted``: parts added to the loss
  with weight 1 (an estimator's own fit, e.g. CLUB's likelihood).

:mod:`hcld_lib.method.terms` lists the declared terms; the objective, the run's name, the
sampler's needs, the speaker branch and the logged columns are all read from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

Settings = Mapping[str, Any]
"""A run's weights and term settings by field name (a ``RunConfig`` viewed as a mapping)."""


@dataclass(frozen=True)
class Setting:
    """A setting a term owns: a ``RunConfig`` field, its default and the values it takes.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``; ``choices`` lists the values of a
    switch; ``low`` / ``high`` bound a number (``low_open``: ``low`` itself excluded)."""

    name: str
    default: Any
    doc: str
    kind: type = float
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False


@dataclass(frozen=True)
class ModuleContext:
    """What a term's own network is built from."""

    embed_dim: int
    n_emotions: int
    n_speakers: int
    emotion_labels: tuple[str, ...]


@dataclass(frozen=True)
class TermInputs:
    """What a term's ``compute`` receives for one batch.

    ``out``: the model's outputs (``x_e`` ``[B, E]``, ``x_s`` ``[B, E]`` or ``None``,
    ``emotion_logits``, ``speaker_logits``); ``emotion``, ``speaker``: ``[B]`` labels;
    ``settings``: the run's settings; ``module``: the term's own network (or ``None``);
    ``progress``: the share of training done, in [0, 1] (epochs over ``max_epochs``)."""

    out: Mapping[str, Tensor | None]
    emotion: Tensor
    speaker: Tensor
    settings: Settings
    module: nn.Module | None = None
    progress: float = 0.0


def _no_positives(settings: Settings) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Term:
    """One term of the objective, declared once (see the module docstring)."""

    name: str
    title: str
    compute: Callable[[TermInputs], dict[str, Tensor]]
    """``compute(inputs) -> {name: value, <part>: value, ...}``, scalar tensors."""
    sides: Callable[[Settings], dict[str, tuple[str, ...]]]
    """``sides(settings) -> {"x_e" | "x_s": settings that decide that side}``."""
    settings: tuple[Setting, ...] = ()
    reads: tuple[str, ...] = ()
    """Settings owned by another term that this one reads too (e.g. the temperature)."""
    couples: bool = False
    positives: Callable[[Settings], tuple[str, ...]] = _no_positives
    module: Callable[[ModuleContext, Settings], nn.Module] | None = None
    parts: tuple[str, ...] = ()
    fitted: tuple[str, ...] = ()
    equation: str = field(default="", compare=False)

    @property
    def weight(self) -> str:
        """The ``RunConfig`` field of its weight."""
        return f"w_{self.name}"

    @property
    def setting_names(self) -> tuple[str, ...]:
        """Every setting it reads (its own, then the shared ones)."""
        return tuple(s.name for s in self.settings) + self.reads

    @property
    def logged(self) -> tuple[str, ...]:
        """The history columns it fills, as ``loss_<x>``: its parts, then its value."""
        return (*self.parts, self.name)
