"""One source of truth for every setting: the run configuration, named variants and profiles.

The notebooks' ``parameters`` cell, the grid and the tests all build a :class:`RunConfig`.
The points the paper leaves open (SPEC §1.1) are named fields with the defaults we chose:

========================  =====================  ================================================
field                     default                meaning / alternative
========================  =====================  ================================================
``pos_space``             ``"emotion"``          L_pos on X_e as printed; ``"speaker"``: on X_s
``hinge``                 ``"text"``             L_neg = max(0, cos - m)^2 (the text's reading);
                                                 ``"printed"`` = max(0, m - cos)^2
``supcon_space``          ``"emotion"``          SupCon on X_e with emotion labels; ``"speaker"``:
                                                 on X_s with speaker labels
``lcl_include_self``      ``False``              A(i) excludes i in the label-anchored loss
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
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EMOTIONS: tuple[str, ...] = ("neu", "hap", "ang", "sad")
"""The 4-class IEMOCAP set, in the order used for labels and tables (exc is merged into hap)."""

ARCHS: tuple[str, ...] = ("cnn", "lstm", "transformer")

#: Named variants: each is a set of overrides of :class:`RunConfig`'s loss switches and weights.
VARIANTS: dict[str, dict[str, Any]] = {
    # emotion branch and emotion CE alone
    "emo_only": dict(
        speaker_branch=False, w_task_speaker=0.0, w_cld=0.0, w_supcon=0.0, w_label=0.0, w_orth=0.0
    ),
    # multi-task with an orthogonality penalty between X_e and X_s instead of HCLD
    "orth": dict(w_cld=0.0, w_supcon=0.0, w_label=0.0, w_orth=1.0),
    # the full method: L = L_task + L_CLD + L_SCL + L_Label
    "hcld": dict(),
    "hcld_wo_supcon": dict(w_supcon=0.0),
    "hcld_wo_lcl": dict(w_label=0.0),
    # the alternative readings of SPEC §1.1, each runnable by name
    "hcld_pos_speaker": dict(pos_space="speaker"),
    "hcld_printed_hinge": dict(hinge="printed"),
    "hcld_supcon_speaker": dict(supcon_space="speaker"),
    "hcld_lcl_self": dict(lcl_include_self=True),
}

#: The five variants of the paper's Table II, in its row order.
PAPER_VARIANTS: tuple[str, ...] = ("emo_only", "orth", "hcld_wo_supcon", "hcld_wo_lcl", "hcld")


@dataclass
class RunConfig:
    """Everything that defines one training run (one variant, one architecture pair, one fold)."""

    # --- data -------------------------------------------------------------------------------
    features: str = ""
    """Path of a feature cache written by :func:`hcld_lib.features.extract_features`."""
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
    speaker_branch: bool = True
    embed_dim: int = 256
    hidden_dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    init_emotion_encoder: str | None = None
    """A state_dict file loaded into ``model.emotion_encoder`` before training (§6 pretraining)."""

    # --- losses -----------------------------------------------------------------------------
    margin: float = 0.0
    temperature: float = 0.07
    pos_space: str = "emotion"
    hinge: str = "text"
    supcon_space: str = "emotion"
    lcl_include_self: bool = False
    text_encoder: str = "minilm"
    w_task_emotion: float = 1.0
    w_task_speaker: float = 1.0
    w_cld: float = 1.0
    w_supcon: float = 1.0
    w_label: float = 1.0
    w_orth: float = 0.0
    orth_form: str = "correlation"
    """Scale of the orthogonality penalty: ``"correlation"`` = mean squared cross-correlation of
    the batch-normalised X_e and X_s dimensions (in [0, 1]); ``"batch"`` = SPEC §1's
    ``||Ẑ_eᵀ Ẑ_s||_F² / B``, which is ~E_e·E_s for independent embeddings and swamps the other
    terms at weight 1 (see :func:`hcld_lib.losses.orthogonality_loss`)."""

    # --- optimisation -----------------------------------------------------------------------
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-4
    warmup_epochs: int = 5
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    """``"auto"`` picks CUDA when present, else CPU."""
    run_name: str | None = None
    """Folder name of the run; ``None`` derives it from variant, archs, protocol, fold, seed."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried into metrics.json (e.g. the profile name)."""

    def __post_init__(self) -> None:
        from hcld_lib.io import HcldError

        checks = {
            "protocol": (self.protocol, ("paper", "loso")),
            "emotion_arch": (self.emotion_arch, ARCHS),
            "speaker_arch": (self.speaker_arch, (*ARCHS, None)),
            "pos_space": (self.pos_space, ("emotion", "speaker")),
            "hinge": (self.hinge, ("text", "printed")),
            "supcon_space": (self.supcon_space, ("emotion", "speaker")),
            "orth_form": (self.orth_form, ("correlation", "batch")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise HcldError(f"RunConfig.{name}={value!r} is not one of {allowed}")
        if self.variant not in VARIANTS:
            raise HcldError(
                f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}"
            )
        if not 0.0 < self.train_fraction <= 1.0:
            raise HcldError(f"train_fraction={self.train_fraction} must be in (0, 1]")
        if self.frame_stride < 1:
            raise HcldError(f"frame_stride={self.frame_stride} must be >= 1")

    @classmethod
    def for_variant(cls, name: str, **overrides: Any) -> RunConfig:
        """The config of a named variant (see :data:`VARIANTS`), then ``overrides`` on top."""
        from hcld_lib.io import HcldError

        if name not in VARIANTS:
            raise HcldError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
        return cls(**{**VARIANTS[name], "variant": name, **overrides})

    @property
    def speaker_arch_resolved(self) -> str:
        return self.speaker_arch or self.emotion_arch

    @property
    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        arch = self.emotion_arch
        if self.speaker_branch and self.speaker_arch_resolved != self.emotion_arch:
            arch = f"{self.emotion_arch}+{self.speaker_arch_resolved}"
        name = f"{self.variant}__{arch}__{self.protocol}-fold{self.fold}__seed{self.seed}"
        if self.train_fraction < 1.0:
            name += f"__lab{round(self.train_fraction * 100)}"
        return name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


#: Named profiles: defaults for a whole batch of experiments (notebook parameters start here).
PROFILES: dict[str, dict[str, Any]] = {
    # The embedded default: synthetic corpus + log-mel features, narrow encoders, few frames,
    # few epochs, two of the five folds: every notebook of the batch runs in minutes on 2 cores.
    "quick": dict(
        dataset="synthetic",
        backbone="fbank",
        n_utterances=1000,
        protocol="paper",
        n_folds=5,  # splits as the paper's (80/20 per fold, 5 sessions for loso) ...
        folds=2,  # ... of which the first two are run
        epochs=6,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=1,
        embed_dim=64,
        hidden_dim=64,
        n_layers=1,
        # 8 x 20 ms = 160 ms windows; 25 of them = 4 s, the synthetic corpus's longest utterance
        frame_stride=8,
        max_frames=25,
    ),
    # The paper's settings (SPEC §1.2): IEMOCAP, HuBERT-base, 5 folds, 100 epochs, batch 32.
    "paper": dict(
        dataset="iemocap",
        backbone="torchaudio:hubert_base",
        protocol="paper",
        n_folds=5,
        folds=5,
        epochs=100,
        batch_size=32,
        lr=5e-4,
        warmup_epochs=5,
        embed_dim=256,
        hidden_dim=256,
        n_layers=2,
        frame_stride=1,
        max_frames=None,
    ),
}

#: RunConfig fields a profile may set.
RUN_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(RunConfig))


def profile_run_overrides(profile: str) -> dict[str, Any]:
    """The subset of a profile that belongs to :class:`RunConfig`."""
    from hcld_lib.io import HcldError

    if profile not in PROFILES:
        raise HcldError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    return {k: v for k, v in PROFILES[profile].items() if k in RUN_FIELDS}


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (CPU runs repeat)."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
