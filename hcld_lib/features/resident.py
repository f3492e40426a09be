"""What training reads: a fold's normalised, frame-pooled features and their labels.

The frozen features of the cache (``[T, D]`` per utterance, or ``[L, T, D]`` with every SSL
layer) are standardised with the fold's normaliser, average-pooled by ``frame_stride`` over valid
frames only, and cropped to ``max_frames``; batches crop time to their longest utterance (the
encoders mask the padding).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def pool_frames(x: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, int]:
    """Average-pool the frames of one utterance by ``stride``, over valid frames only.

    Args:
        x: ``[..., T, D]`` features whose frames ``>= length`` are padding (set to zero here).
        length: number of valid frames.
        stride: pooling factor (1 = unchanged).
    Returns:
        ``([..., ceil(T / stride), D], ceil(length / stride))``: pooled window ``t`` is the mean of
        the valid frames ``t*stride .. t*stride + stride - 1``; windows past the end are zero.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    x[..., length:, :] = 0.0
    if stride == 1:
        return x, int(length)
    t = x.shape[-2]
    t_out = math.ceil(t / stride)
    pad = t_out * stride - t
    if pad:
        widths = [(0, 0)] * (x.ndim - 2) + [(0, pad), (0, 0)]
        x = np.pad(x, widths)
    summed = x.reshape(*x.shape[:-2], t_out, stride, x.shape[-1]).sum(axis=-2)
    counts = np.clip(length - np.arange(t_out) * stride, 1, stride).astype(np.float32)
    return summed / counts[:, None], math.ceil(length / stride)


class FeatureDataset(Dataset):
    """Rows of a feature cache, normalised, frame-pooled and cropped, with their labels.

    ``__getitem__(i) -> (x [T', D] or [L, T', D] float32, length, emotion, speaker, i)`` where
    ``T' = min(ceil(T / frame_stride), max_frames)`` and ``length`` the valid pooled frames.
    Speaker ``-1`` marks a speaker unseen in training.
    """

    def __init__(
        self,
        cache: Any,
        rows: np.ndarray,
        normalizer: Any,
        emotion: np.ndarray,
        speaker: np.ndarray,
        frame_stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.normalizer = normalizer
        self.emotion = np.asarray(emotion, dtype=np.int64)
        self.speaker = np.asarray(speaker, dtype=np.int64)
        self.frame_stride = int(frame_stride)
        self.max_frames = max_frames

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int, int, int]:
        row = int(self.rows[i])
        length = int(self.cache.lengths[row])
        x = self.normalizer.transform(np.asarray(self.cache.array[row], dtype=np.float32))
        x, length = pool_frames(np.asarray(x), length, self.frame_stride)
        if self.max_frames is not None:
            x = x[..., : self.max_frames, :]
            length = min(length, int(self.max_frames))
        length = max(length, 1)
        return torch.from_numpy(np.ascontiguousarray(x)), length, int(self.emotion[i]), int(
            self.speaker[i]
        ), i


def collate(items: list[tuple[Tensor, int, int, int, int]]) -> dict[str, Tensor]:
    """Stack items; crop time to the longest valid length in the batch (padding is masked)."""
    x = torch.stack([it[0] for it in items])
    lengths = torch.tensor([it[1] for it in items], dtype=torch.long)
    x = x[..., : int(lengths.max()), :]
    return {
        "x": x,
        "lengths": lengths,
        "emotion": torch.tensor([it[2] for it in items], dtype=torch.long),
        "speaker": torch.tensor([it[3] for it in items], dtype=torch.long),
        "index": torch.tensor([it[4] for it in items], dtype=torch.long),
    }
