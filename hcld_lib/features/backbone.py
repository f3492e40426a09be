"""A frozen encoder ("upstream"): waveforms in, hidden states out.

:class:`Backbone` is what every encoder implements (:mod:`~hcld_lib.features.fbank`,
:mod:`~hcld_lib.features.ssl`). Frame counts of the SSL encoders follow their convolutional front
end: for each layer ``(kernel k, stride s)``, ``n -> floor((n - k) / s) + 1``; HuBERT's stack is
k = (10, 3, 3, 3, 3, 2, 2), s = (5, 2, 2, 2, 2, 2, 2), so 120000 samples (7.5 s at 16 kHz) ->
374 frames.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hcld_lib.io import HcldError, atomic_write_json
from hcld_lib.runtime import cache_home

#: (kernel, stride) of the 7-layer convolutional front end of HuBERT / wav2vec 2.0 / WavLM.
HUBERT_CONV_LAYERS: tuple[tuple[int, int], ...] = (
    (10, 5),
    (3, 2),
    (3, 2),
    (3, 2),
    (3, 2),
    (2, 2),
    (2, 2),
)


def conv_frame_count(
    n_samples: int, conv_layers: Sequence[tuple[int, int]] = HUBERT_CONV_LAYERS
) -> int:
    """Frames out of a stack of valid (unpadded) 1-D convolutions.

    Per layer ``(k, s)``: ``n -> floor((n - k) / s) + 1``, and 0 once ``n < k``.
    HuBERT-base: 120000 samples (7.5 s at 16 kHz) -> 374 frames, 400 samples -> 1 frame.
    """
    n = int(n_samples)
    for k, s in conv_layers:
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def min_samples(conv_layers: Sequence[tuple[int, int]]) -> int:
    """Smallest input that yields one frame (the receptive field): 400 samples for HuBERT."""
    m = 1
    for k, s in reversed(conv_layers):
        m = (m - 1) * s + k
    return m


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) across processes.

    Checkpoints are hundreds of MB; their hash names the feature cache they make, and every
    notebook asks for it. The memo (``sha256.json`` in :func:`hcld_lib.runtime.cache_home`) is
    rewritten atomically; a changed file (size or mtime) is hashed again.
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    memo_path = cache_home() / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(str(path))
    if isinstance(entry, list) and entry[:2] == stamp:
        return str(entry[2])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    memo[str(path)] = [*stamp, h.hexdigest()]
    try:
        atomic_write_json(memo_path, memo)
    except (OSError, HcldError):  # a read-only home: hash again next time
        pass
    return h.hexdigest()


def pad_stack(frames: list[torch.Tensor]) -> torch.Tensor:
    """``[T_i, C]`` tensors -> zero-padded ``[B, max T_i, C]``."""
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)


class Backbone:
    """A frozen encoder: waveforms in, hidden states out.

    Attributes:
        spec: the backbone string (``"fbank"``, ``"torchaudio:hubert_base"``, ``"hf:..."``).
        sample_rate: the rate the encoder expects (Hz).
        num_layers: how many hidden states can be selected (1 for fbank).
        feature_dim: D.
        min_samples: shortest input that yields one frame; shorter clips are zero-padded to it.
        exposed_layers: the hidden states ``forward`` can return, when not all of
            ``0..num_layers-1`` (``layers_note`` says why and what to use instead).

    A backbone of your own (any frozen encoder) subclasses this, sets the attributes and
    implements the four methods; :func:`hcld_lib.features.extract.extract_features` takes an
    instance, or a name given to :func:`hcld_lib.features.registry.register_backbone` or
    declared as an entry point of the group ``hcld.backbones``.
    """

    spec: str
    sample_rate: int
    num_layers: int
    feature_dim: int
    min_samples: int
    exposed_layers: tuple[int, ...] | None = None
    layers_note: str = ""

    def identity(self) -> dict[str, Any]:
        """What, besides the spec, decides the numbers it produces (checkpoint hash, config)."""
        raise NotImplementedError

    def frame_count(self, n_samples: int) -> int:
        """Valid output frames for ``n_samples`` valid input samples (at least ``min_samples``)."""
        raise NotImplementedError

    def load(self, device: torch.device) -> None:
        """Build the model on ``device`` in eval mode."""
        raise NotImplementedError

    def forward(
        self, waves: Sequence[np.ndarray], layers: Sequence[int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Encode unpadded mono waveforms (each ``[n_i]``, ``n_i >= min_samples``).

        Returns:
            ``(features [B, len(layers), T, D] float32 on CPU, frames [B] int64)`` with
            ``T >= max(frames)``; values at ``t >= frames[b]`` are unspecified.
        """
        raise NotImplementedError

    @property
    def cache_name(self) -> str:
        """The backbone's name in the cache key (with :meth:`identity`): the spec, unless the
        spec holds a path that does not decide the numbers (the identity's hashes do)."""
        return self.spec

    @property
    def slug(self) -> str:
        """Folder-name form of the spec (``torchaudio-hubert_base``, ``hf-<folder name>``,
        ``ct2-<folder name>``)."""
        name = self.spec
        prefix, sep, target = name.partition(":")
        if sep and prefix in ("hf", "ct2", "whisper"):
            local = Path(target.removesuffix("@30s")).expanduser()
            if local.is_dir():
                name = f"{prefix}-{local.name}" + ("-30s" if target.endswith("@30s") else "")
            else:
                name = f"{prefix}-{target}"
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
        return slug[:48] or "features"
