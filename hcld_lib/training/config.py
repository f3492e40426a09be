"""One run's settings: :class:`RunConfig`, the single source of truth the notebooks, the grid,
the command line and the tests all build.

A run is one variant x architecture x fold x seed. The variant owns the loss weights, the
branches and the switches of the loss terms (:mod:`hcld_lib.method.variants`):
``RunConfig(variant="emo_only")`` has exactly EMO-only's settings, and ``replace(variant=...)``
gives exactly the new variant's. A field the variant owns can still be set explicitly (it is a
reading or an ablation of its own); the run's name then says so.

The points the paper leaves open are named fields (the README's open-points table):

========================  =====================  ================================================
field                     default                meaning / alternative
========================  =====================  ================================================
``pos_space``             ``"emotion"``          L_pos on X_e as printed; ``"speaker"``: on X_s
``hinge``                 ``"text"``             L_neg = max(0, cos - m)^2 (the text's reading);
                                                 ``"printed"`` = max(0, m - cos)^2
``supcon_space``          ``"emotion"``          SupCon on X_e with emotion labels; ``"speaker"``:
                                                 on X_s with speaker labels
``lcl_include_self``      ``False``              A(i) excludes i in the label-anchored loss
``branches``              ``"separate"``         two encoders; ``"shared"``: one encoder and a
                                                 projection per branch
``orth_form``             ``"correlation"``      orth baseline: mean squared cross-correlation;
                                                 ``"batch"`` = ||Ẑ_eᵀ Ẑ_s||_F² / B
``margin``                ``0.0``                hinge margin m (not given in the paper)
``temperature``           ``0.07``               tau of SupCon and of the label-anchored loss
``text_encoder``          ``"minilm"``           label-word encoder; the paper's is roberta-base
                                                 (``"hf:roberta-base"`` or a local folder);
                                                 ``"learned"`` = free anchors
========================  =====================  ================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcld_lib.data.splits import PROTOCOLS
from hcld_lib.io import HcldError
from hcld_lib.method.variants import ARCHS, SWITCHES, VARIANT_FIELDS, variant_settings

#: Settings that change what a run computes only when a term that reads them is on; the run's
#: name and the check that a run folder holds this run look at them only then.
_RELEVANT_IF: dict[str, tuple[str, ...]] = {
    "pos_space": ("w_cld",),
    "hinge": ("w_cld",),
    "margin": ("w_cld",),
    "supcon_space": ("w_supcon",),
    "lcl_include_self": ("w_label",),
    "text_encoder": ("w_label",),
    "temperature": ("w_supcon", "w_label"),
    "orth_form": ("w_orth",),
}
#: Fields that name a reading or an ablation when they differ from the variant's defaults.
_TAGGED: tuple[str, ...] = (*VARIANT_FIELDS, "branches", "orth_form", "margin", "temperature",
                            "text_encoder")


@dataclass
class RunConfig:
    """Everything that defines one training run (one variant, architecture, fold and seed)."""

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

    # --- the variant's weights and switches (None = the variant's value) --------------------
    speaker_branch: bool | None = None
    w_task_emotion: float | None = None
    w_task_speaker: float | None = None
    w_cld: float | None = None
    w_supcon: float | None = None
    w_label: float | None = None
    w_orth: float | None = None
    pos_space: str | None = None
    hinge: str | None = None
    supcon_space: str | None = None
    lcl_include_self: bool | None = None

    # --- other loss settings ----------------------------------------------------------------
    margin: float = 0.0
    temperature: float = 0.07
    text_encoder: str = "minilm"
    orth_form: str = "correlation"
    """Scale of the orthogonality penalty: ``"correlation"`` = mean squared cross-correlation of
    the batch-normalised X_e and X_s dimensions (in [0, 1]); ``"batch"`` = ``||Ẑ_eᵀ Ẑ_s||_F² /
    B``, which is ~E_e·E_s for independent embeddings and swamps the other terms at weight 1
    (see :func:`hcld_lib.method.losses.orthogonality_loss`)."""

    # --- optimisation -----------------------------------------------------------------------
    epochs: int = 100
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
        if not 0.0 < self.train_fraction <= 1.0:
            raise HcldError(f"train_fraction={self.train_fraction} must be in (0, 1]")
        if self.frame_stride < 1:
            raise HcldError(f"frame_stride={self.frame_stride} must be >= 1")
        if self.checkpoint_every < 1:
            raise HcldError(f"checkpoint_every={self.checkpoint_every} must be >= 1")
        if self.branches == "shared" and self.speaker_arch not in (None, self.emotion_arch):
            raise HcldError(f"branches='shared' has one encoder; speaker_arch="
                            f"{self.speaker_arch!r} must be None or {self.emotion_arch!r}")
        if not self.speaker_branch:
            needs = {"w_task_speaker": self.w_task_speaker, "w_cld": self.w_cld,
                     "w_orth": self.w_orth,
                     "w_supcon (supcon_space='speaker')":
                         self.w_supcon if self.supcon_space == "speaker" else 0.0}
            bad = [k for k, w in needs.items() if w > 0]
            if bad:
                raise HcldError(f"speaker_branch=False but {bad} > 0 need the speaker branch; "
                                "set them to 0 or enable speaker_branch")

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

    def loss_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`hcld_lib.method.losses.objective`."""
        names = ("w_task_emotion", "w_task_speaker", "w_cld", "w_supcon", "w_label", "w_orth",
                 "margin", "temperature", "pos_space", "hinge", "supcon_space",
                 "lcl_include_self", "orth_form")
        return {n: getattr(self, n) for n in names}

    def _relevant(self, name: str) -> bool:
        weights = _RELEVANT_IF.get(name)
        return weights is None or any(getattr(self, w) > 0 for w in weights)

    def reading(self) -> dict[str, Any]:
        """The settings in which this run departs from its variant's defaults (and which matter
        under its weights): a reading of an open point, a sweep value or an ablation."""
        defaults = RunConfig(variant=self.variant)
        return {k: getattr(self, k) for k in _TAGGED
                if getattr(self, k) != getattr(defaults, k) and self._relevant(k)}

    def identity(self) -> dict[str, Any]:
        """The settings that decide the result (not where it is written, on which device, how
        often it is checkpointed, nor a setting that no active term reads)."""
        skip = {"out_dir", "device", "extra", "run_name", "checkpoint_every", "resident"}
        return {k: v for k, v in self.to_dict().items()
                if k not in skip and (k not in _RELEVANT_IF or self._relevant(k))}

    @property
    def run_dir(self) -> Path:
        """The run's folder: ``out_dir/<resolved_run_name>``."""
        return Path(self.out_dir) / self.resolved_run_name

    @property
    def resolved_run_name(self) -> str:
        """``<variant>__<arch>__<protocol>-fold<k>__seed<s>`` + ``__lab<pct>`` for a label
        budget + ``__<field>=<value>`` for each setting of :meth:`reading`."""
        if self.run_name:
            return self.run_name
        arch = self.emotion_arch
        if self.speaker_branch and self.speaker_arch_resolved != self.emotion_arch:
            arch = f"{self.emotion_arch}+{self.speaker_arch_resolved}"
        name = f"{self.variant}__{arch}__{self.protocol}-fold{self.fold}__seed{self.seed}"
        if self.train_fraction < 1.0:
            name += f"__lab{round(self.train_fraction * 100)}"
        for key, value in self.reading().items():
            text = str(value).replace("/", "-").replace(":", "-")
            name += f"__{key}={text}"
        return name


#: The fields of :class:`RunConfig`.
RUN_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig))
