"""One run's settings: :class:`RunConfig`, the single source of truth the notebooks, the grid,
the command line and the tests all build.

A run is one variant x architecture x fold x seed. The variant owns the loss weights, the
branches and the switches of the loss terms (:mod:`hcld_lib.method.variants`):
``RunConfig(variant="emo_only")`` has exactly EMO-only's settings, and ``replace(variant=...)``
gives exactly the new variant's. A field the variant owns can still be set explicitly (it is a
reading or an ablation of its own); the run's name then says so.

The loss terms' weights (``w_<term>``) and settings are fields too, declared once with each
term (:mod:`hcld_lib.method.terms`): a new term brings its own. The points the paper leaves open
are named fields (the README's open-points table):

==========================  =====================  ==============================================
field                       default                meaning / alternative
==========================  =====================  ==============================================
``icld_pos_space``          ``"emotion"``          L_pos on X_e as printed; ``"speaker"``: on X_s
``icld_hinge``              ``"below"``            L_neg = max(0, cos - m)^2 pushes a negative
                                                   pair's cosine below m (the text); ``"above"``
                                                   = max(0, m - cos)^2 (as printed)
``supcon_space``            ``"emotion"``          SupCon on X_e with emotion labels;
                                                   ``"speaker"``: on X_s with speaker labels
``lcl_include_self``        ``False``              A(i) excludes i in LCL
``branches``                ``"separate"``         two encoders; ``"shared"``: one encoder and a
                                                   projection per branch
``orth_form``               ``"correlation"``      orth baseline: mean squared cross-correlation;
                                                   ``"batch"`` = ||Ẑ_eᵀ Ẑ_s||_F² / B
``icld_margin``             ``0.0``                hinge margin m (not given in the paper)
``temperature``             ``0.07``               tau of SupCon and of LCL
``lcl_text_encoder``        ``"minilm"``           label-word encoder; the paper's is roberta-base
                                                   (``"hf:roberta-base"`` or a local folder);
                                                   ``"learned"`` = free anchors
==========================  =====================  ==============================================

Settings come from three places, the later winning: the defaults here (and each term's), the
variant (its weights and readings), and what the caller sets (a profile, a notebook's knobs and
``overrides``, a grid's reading; all of them end as keyword arguments of ``RunConfig``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hcld_lib.data.splits import PROTOCOLS
from hcld_lib.io import HcldError, short_hash
from hcld_lib.method.terms import (
    SETTINGS,
    WEIGHTS,
    emotion_settings,
    needs_speaker_branch,
    relevant_settings,
    sampler_needs,
)
from hcld_lib.method.variants import ARCHS, SWITCHES, VARIANT_FIELDS, variant_settings


@dataclass(frozen=True)
class _Range:
    """The values a numeric field takes: ``kind`` (int or float), bounds (``None``: none), and
    whether ``None`` is allowed."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def text(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        bounds = (f"{'(' if self.low_open or self.low is None else '['}{low}, {high}"
                  f"{')' if self.high_open or self.high is None else ']'}")
        return f"{'an int' if self.kind is int else 'a finite number'} in {bounds}" + (
            " or None" if self.optional else "")


_WEIGHT = _Range(float, 0.0)
#: The allowed values of every numeric field (checked when a config is made).
_RANGES: dict[str, _Range] = {
    "n_folds": _Range(int, 2), "fold": _Range(int, 0), "val_fraction": _Range(float, 0, 1,
                                                                              high_open=True),
    "train_fraction": _Range(float, 0, 1, low_open=True), "frame_stride": _Range(int, 1),
    "max_frames": _Range(int, 1, optional=True), "embed_dim": _Range(int, 1),
    "hidden_dim": _Range(int, 1), "n_layers": _Range(int, 1), "n_heads": _Range(int, 1),
    "dropout": _Range(float, 0, 1, high_open=True), "max_epochs": _Range(int, 1),
    "patience": _Range(int, 1), "plateau_window": _Range(int, 1), "min_epochs": _Range(int, 0),
    "batch_size": _Range(int, 2), "lr": _Range(float, 0, low_open=True),
    "warmup_epochs": _Range(int, 0), "weight_decay": _Range(float, 0), "seed": _Range(int, 0),
    "checkpoint_every": _Range(int, 1),
    **{w: _WEIGHT for w in WEIGHTS},
    **{name: _Range(s.kind, s.low, s.high, s.low_open) for name, s in SETTINGS.items()
       if s.kind in (int, float)},
}


def _check_range(name: str, value: Any, allowed: _Range) -> None:
    """Raise :class:`HcldError` unless ``value`` is one of the values ``allowed``."""
    if value is None and allowed.optional:
        return
    number = (int, np.integer) if allowed.kind is int else (int, float, np.integer, np.floating)
    ok_type = isinstance(value, number) and not isinstance(value, bool | np.bool_)
    ok = ok_type and math.isfinite(value)
    if ok and allowed.low is not None:
        ok = value > allowed.low if allowed.low_open else value >= allowed.low
    if ok and allowed.high is not None:
        ok = value < allowed.high if allowed.high_open else value <= allowed.high
    if not ok:
        raise HcldError(f"RunConfig.{name}={value!r} must be {allowed.text()}")


def _check_device(device: Any) -> None:
    """Raise :class:`HcldError` for a device string this machine does not have."""
    import torch

    text = str(device)
    if text in ("auto", "cpu"):
        return
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError) as err:
        raise HcldError(f"RunConfig.device={device!r} is not a device ('auto', 'cpu', 'cuda', "
                        "'cuda:N')") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (dev.index or 0) >= count:
            raise HcldError(f"RunConfig.device={device!r}: this machine has {count} CUDA "
                            "device(s); use 'auto' or 'cpu'"
                            + (f" or cuda:0..cuda:{count - 1}" if count else ""))
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise HcldError(f"RunConfig.device={device!r}: MPS is not available here; use 'auto'")


def _term_fields() -> list[tuple[str, Any, Any]]:
    """The fields every term declares: its weight ``w_<term>`` (``None`` = the variant's) and
    its settings (``None`` = the variant's for those a variant may change; else the default)."""
    fields = [(w, float | None, field(default=None, metadata={"doc": "weight; None = the "
                                                                     "variant's"}))
              for w in WEIGHTS]
    for name, s in SETTINGS.items():
        owned = name in VARIANT_FIELDS
        fields.append((name, s.kind | None if owned else s.kind,
                       field(default=None if owned else s.default, metadata={"doc": s.doc})))
    return fields


_TermFields = dataclasses.make_dataclass("_TermFields", _term_fields())


@dataclass
class RunConfig(_TermFields):
    """Everything that defines one training run (one variant, architecture, fold and seed).

    Besides the fields below, every term of :data:`hcld_lib.method.terms.TERMS` adds its weight
    ``w_<term>`` and its settings (``icld_margin``, ``temperature``, ``adversarial_lambda``, ...;
    their meaning is in the term's declaration, :data:`hcld_lib.method.terms.SETTINGS`).
    """

    # --- data -------------------------------------------------------------------------------
    features: str = ""
    """Path of a feature cache written by :func:`hcld_lib.features.extract.extract_features`."""
    out_dir: str = "runs"
    """Folder that receives ``<run_name>/`` with metrics, history, embeddings and checkpoints."""
    protocol: str = "paper"
    """``"paper"`` (stratified K-fold over all utterances) or ``"loso"`` (leave-one-session-out)."""
    n_folds: int = 5
    fold: int = 0
    val_fraction: float = 0.1
    """Share of each fold's training part carved off (stratified) for model selection."""
    train_fraction: float = 1.0
    """Share of the (post-validation) training part whose labels are used (label-budget runs)."""
    frame_stride: int = 1
    """Average-pool frames by this factor before the encoders (1 = the paper's full frame rate)."""
    max_frames: int | None = None
    """Crop features to this many frames (after ``frame_stride``); ``None`` keeps all."""

    # --- model ------------------------------------------------------------------------------
    variant: str = "hcld"
    emotion_arch: str = "cnn"
    speaker_arch: str | None = None
    """Architecture of the speaker branch; ``None`` = the same as ``emotion_arch``."""
    branches: str = "separate"
    """``"separate"``: two encoders; ``"shared"``: one encoder + a projection per branch."""
    embed_dim: int = 256
    hidden_dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    init_emotion_encoder: str | None = None
    """A file saved by cluster pretraining, loaded into the model's emotion path first."""

    # --- how long (:mod:`hcld_lib.training.stopping`) ------------------------------------------
    max_epochs: int = 100
    """Epochs at most (the paper's fixed budget: 100)."""
    stop_at_plateau: bool = False
    """Stop once the plateau rule holds (and ``min_epochs`` are done); ``False`` trains every one
    of ``max_epochs`` (the paper's). Either way the run records where the rule first held: a run
    where it never did is marked not converged."""
    patience: int = 10
    """The plateau rule: this many epochs without a new best of the smoothed validation
    emotion UA."""
    plateau_window: int = 5
    """The plateau rule smooths validation emotion UA by its mean over this many epochs."""
    min_epochs: int = 1
    """Never stop before this many epochs (capped at ``max_epochs``): shorter budgets are then
    exact prefixes of every run (:func:`hcld_lib.training.stopping.at_budget`)."""

    # --- optimisation -----------------------------------------------------------------------
    batch_size: int = 32
    lr: float = 5e-4
    warmup_epochs: int = 5
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    """``"auto"`` picks CUDA when present, else CPU."""
    amp: bool = False
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); the loss
    terms stay in float32. Ignored on the CPU."""
    checkpoint_every: int = 1
    """Write the resumable checkpoint every this many epochs (and after the last)."""
    resident: str = "auto"
    """The fold's features in memory on the training device (``"auto"``: when they fit, else
    read per batch from the memory-mapped cache; ``"on"``; ``"off"``); the numbers are the same."""
    run_name: str | None = None
    """Folder name of the run; ``None`` derives it (:attr:`resolved_run_name`)."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into metrics.json (e.g. the profile name)."""

    def __post_init__(self) -> None:
        for name, value in variant_settings(self.variant).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        checks = {**SWITCHES, "protocol": PROTOCOLS, "speaker_arch": (*ARCHS, None),
                  "resident": ("auto", "on", "off")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise HcldError(f"RunConfig.{name}={getattr(self, name)!r} is not one of "
                                f"{allowed}")
        for name, allowed in _RANGES.items():
            _check_range(name, getattr(self, name), allowed)
        for name, setting in SETTINGS.items():
            if setting.kind in (bool, str) and not isinstance(getattr(self, name), setting.kind):
                raise HcldError(f"RunConfig.{name}={getattr(self, name)!r} must be a "
                                f"{setting.kind.__name__}")
        _check_device(self.device)
        if self.stop_at_plateau and self.val_fraction <= 0:
            raise HcldError("stop_at_plateau=True watches the validation part, but "
                            "val_fraction=0 carves none; set val_fraction > 0")
        if self.branches == "shared" and self.speaker_arch not in (None, self.emotion_arch):
            raise HcldError(f"branches='shared' has one encoder; speaker_arch="
                            f"{self.speaker_arch!r} must be None or {self.emotion_arch!r}")
        if self.w_ce_emotion <= 0:
            raise HcldError("w_ce_emotion must be > 0: the emotion head is trained by it and "
                            "every result reads it")

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``; a new ``variant`` brings all of its own settings (the fields
        it owns take the new variant's values unless ``changes`` sets them too)."""
        if "variant" in changes:
            changes = {**{k: None for k in VARIANT_FIELDS}, **changes}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def speaker_arch_resolved(self) -> str:
        return self.speaker_arch or self.emotion_arch

    def settings(self) -> dict[str, Any]:
        """The weights and term settings, by field name (what the objective reads)."""
        return {name: getattr(self, name) for name in (*WEIGHTS, *SETTINGS)}

    @property
    def speaker_branch(self) -> bool:
        """Whether the model has a speaker branch: a term of this run reaches X_s."""
        return needs_speaker_branch(self.settings())

    @property
    def sampler_needs(self) -> tuple[str, ...]:
        """The positives the batches must hold for the contrastive terms of this run."""
        return sampler_needs(self.settings())

    def _unread(self) -> set[str]:
        """The term settings no active term reads: the only fields that do not matter."""
        return set(SETTINGS) - relevant_settings(self.settings())

    def departures(self) -> dict[str, Any]:
        """The settings in which this run departs from its variant (and which matter under its
        weights): a reading of an open point, a sweep value or an ablation."""
        defaults = RunConfig(variant=self.variant)
        fields = (*VARIANT_FIELDS, "branches", *SETTINGS)
        unread = self._unread()
        return {k: getattr(self, k) for k in dict.fromkeys(fields)
                if getattr(self, k) != getattr(defaults, k) and k not in unread}

    def result_key(self) -> dict[str, Any]:
        """The settings that decide the result: not where it is written, on which device, how
        often it is checkpointed, nor a term setting that no active term reads. A finished run
        folder or a checkpoint holding another key is refused."""
        skip = {"out_dir", "device", "extra", "run_name", "checkpoint_every", "resident"}
        skip |= self._unread()
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def emotion_key(self) -> str:
        """A hash of the settings that decide X_e (and so every emotion result): two runs with
        the same key have the same emotion branch, epoch by epoch, bit for bit.

        With separate branches and no term that couples X_e and X_s, a term that reaches X_s
        only (the speaker task, L_neg, ...) and the settings only it reads cannot change X_e
        (:func:`hcld_lib.method.terms.emotion_settings`); otherwise every setting may. The
        batches (the sampler's needs) always count, and with dropout so does the speaker branch,
        whose dropout masks come from the same random stream.
        """
        decides = None if self.branches == "shared" else emotion_settings(self.settings())
        key = self.result_key()
        if decides is not None:
            speaker_side = {*WEIGHTS, *SETTINGS} - decides
            if self.dropout == 0:  # with dropout, the speaker branch draws from the same RNG
                speaker_side.add("speaker_arch")
            key = {k: v for k, v in key.items() if k not in speaker_side}
            key["sampler_needs"] = list(self.sampler_needs)  # the batches
            if self.dropout > 0:
                key["speaker_branch"] = self.speaker_branch
        key.pop("variant", None)
        return short_hash(key)

    @property
    def run_dir(self) -> Path:
        """The run's folder: ``out_dir/<resolved_run_name>``."""
        return Path(self.out_dir) / self.resolved_run_name

    @property
    def resolved_run_name(self) -> str:
        """``<variant>__<arch>__<protocol>-fold<k>__seed<s>`` + ``__lab<pct>`` for a label
        budget + ``__<field>=<value>`` for each setting of :meth:`departures`."""
        if self.run_name:
            return self.run_name
        arch = self.emotion_arch
        if self.speaker_branch and self.speaker_arch_resolved != self.emotion_arch:
            arch = f"{self.emotion_arch}+{self.speaker_arch_resolved}"
        name = f"{self.variant}__{arch}__{self.protocol}-fold{self.fold}__seed{self.seed}"
        if self.train_fraction < 1.0:
            name += f"__lab{round(self.train_fraction * 100)}"
        for key, value in self.departures().items():
            text = str(value).replace("/", "-").replace(":", "-")
            name += f"__{key}={text}"
        return name


#: The fields of :class:`RunConfig`.
RUN_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig))
