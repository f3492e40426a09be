"""Every term of the objective, and what a run's settings make of them.

:data:`TERMS` lists the declared terms (:class:`~hcld_lib.method.term.Term`): the paper's
(:data:`hcld_lib.method.losses.TERMS`) and the decoupling baselines beyond it (adversarial
speaker removal, :mod:`~hcld_lib.method.adversarial`; mutual-information minimisation,
:mod:`~hcld_lib.method.club`). The loss a run minimises on a batch is::

    L = sum over the active terms t of  w_t * value_t  +  the parts t fits with weight 1

where a term is active when its weight ``w_<name>`` is above 0. Everything else a run needs to
know about its terms is read from their declarations here: the settings that matter
(:func:`relevant_settings`), the speaker branch (:func:`needs_speaker_branch`), the positives
the batches must hold (:func:`sampler_needs`), the logged columns (:data:`LOGGED`), and which
settings decide X_e (:func:`emotion_settings`).

**Adding a method** is one module in ``hcld_lib/method/`` holding its functions and its
``TERM = Term(...)`` declaration, one line in :data:`TERMS`, and one entry in
:data:`hcld_lib.method.variants.VARIANTS`; its weight and settings then become ``RunConfig``
fields, and it appears in the objective, the run names, the sampler's needs and the logs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hcld_lib.io import HcldError
from hcld_lib.method import adversarial, club, losses
from hcld_lib.method.term import ModuleContext, Setting, Settings, Term, TermInputs

TERMS: tuple[Term, ...] = (*losses.TERMS, adversarial.TERM, club.TERM)
"""Every term, in the order the objective adds them."""

BY_NAME: dict[str, Term] = {t.name: t for t in TERMS}
WEIGHTS: tuple[str, ...] = tuple(t.weight for t in TERMS)
SETTINGS: dict[str, Setting] = {s.name: s for t in TERMS for s in t.settings}
LOGGED: tuple[str, ...] = tuple(dict.fromkeys(name for t in TERMS for name in t.logged))
"""Every value a run logs per epoch, as ``loss_<name>``."""


def _check_declarations() -> None:
    names = [t.name for t in TERMS]
    owned = [s.name for t in TERMS for s in t.settings]
    for what, items in (("term", names), ("setting", owned)):
        repeated = sorted({n for n in items if items.count(n) > 1})
        if repeated:
            raise HcldError(f"{what}(s) {repeated} declared twice in hcld_lib.method.terms")
    unknown = sorted({r for t in TERMS for r in t.reads} - set(owned))
    if unknown:
        raise HcldError(f"terms read settings {unknown} that no term declares")


_check_declarations()


def active_terms(settings: Settings) -> list[Term]:
    """The terms whose weight in ``settings`` is above 0, in :data:`TERMS` order."""
    return [t for t in TERMS if settings.get(t.weight, 0.0) > 0]


def needs_speaker_branch(settings: Settings) -> bool:
    """Whether an active term reaches X_s (the model then has a speaker branch)."""
    return any("x_s" in t.sides(settings) for t in active_terms(settings))


def sampler_needs(settings: Settings) -> tuple[str, ...]:
    """The kinds of positives the batches must hold for the active terms."""
    return tuple(dict.fromkeys(n for t in active_terms(settings) for n in t.positives(settings)))


def relevant_settings(settings: Settings) -> set[str]:
    """The term settings that change what a run computes: those an active term reads."""
    return {name for t in active_terms(settings) for name in t.setting_names}


def emotion_settings(settings: Settings) -> set[str] | None:
    """The weights and term settings that decide X_e, or ``None`` when every one may.

    With separate branches the emotion encoder shares no parameter with the speaker branch, so
    a term whose gradient reaches only X_s (the speaker task, L_neg, ...) cannot change X_e,
    nor can a setting only such a part reads. That holds unless an active term *couples* the
    two embeddings (orth, mi: X_s then shapes X_e's gradient), or the encoder is shared
    (``branches="shared"``, which the caller checks): then ``None``.
    """
    active = active_terms(settings)
    if any(t.couples for t in active):
        return None
    out: set[str] = set()
    for t in active:
        side = t.sides(settings)
        if "x_e" in side:
            out |= {t.weight, *side["x_e"]}
    return out


def objective(out: Mapping[str, Tensor | None], emotion: Tensor, speaker: Tensor,
              settings: Settings, modules: Mapping[str, nn.Module] | None = None,
              progress: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss minimised for one batch and every value the active terms logged (module
    docstring).

    Args:
        out: the model's outputs (``x_e``, ``x_s``, ``emotion_logits``, ``speaker_logits``).
        emotion, speaker: ``[B]`` long labels.
        settings: the run's weights and term settings (``RunConfig.settings()``).
        modules: each active term's own network by term name (``build_term_modules``).
        progress: the share of training done, in [0, 1].
    Returns: ``(L, {name: value})`` with the names of :data:`LOGGED` the active terms fill.
    """
    total = out["x_e"].new_zeros(())
    values: dict[str, Tensor] = {}
    for term in active_terms(settings):
        loss, got = term_loss(term, out, emotion, speaker, settings, modules, progress)
        values.update(got)
        total = total + loss
    return total, values


def term_loss(term: Term, out: Mapping[str, Tensor | None], emotion: Tensor, speaker: Tensor,
              settings: Settings, modules: Mapping[str, nn.Module] | None = None,
              progress: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """What one term adds to the loss, ``w_<name> * value`` plus the parts it fits with weight
    1, and every value it logged (:func:`objective`'s summand; same arguments)."""
    modules = modules or {}
    if "x_s" in term.sides(settings) and out.get("x_s") is None:
        raise HcldError(f"the term {term.name!r} reads X_s, but the model has no speaker "
                        "branch")
    if term.module is not None and term.name not in modules:
        raise HcldError(f"the term {term.name!r} trains a network of its own; pass it in "
                        "modules (build_term_modules)")
    module = modules[term.name] if term.name in modules else None  # a ModuleDict: no .get
    got = term.compute(TermInputs(out, emotion, speaker, settings, module, progress))
    loss = settings[term.weight] * got[term.name]
    for part in term.fitted:
        loss = loss + got[part]
    return loss, got


def build_term_modules(settings: Settings, ctx: ModuleContext, seed: int) -> nn.ModuleDict:
    """The networks of the active terms that train one (:attr:`Term.module`), by term name.

    Each is built, then its weights are drawn again from ``seed + 1`` (a forked generator):
    neither the model's initial weights nor these depend on which other terms are on, nor on
    whether building the module consumed random numbers (a text encoder loaded or not).
    """
    modules = {}
    for term in active_terms(settings):
        if term.module is None:
            continue
        with torch.random.fork_rng(devices=[]):
            module = term.module(ctx, settings)
            torch.manual_seed(seed + 1)
            for sub in module.modules():
                if sub is not module and hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        modules[term.name] = module
    return nn.ModuleDict(modules)
