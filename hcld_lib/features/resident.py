"""What training reads: a fold's normalised, frame-pooled features, resident in memory.

The frozen features of the cache (``[T, D]`` per utterance, or ``[L, T, D]`` with every SSL
layer) are standardised with the fold's normaliser, average-pooled by ``frame_stride`` over valid
frames only, and cropped to ``max_frames`` (:func:`prepare_rows`)::

    z[t]    = (x[t] - mean) / std                          for t < length, 0 after
    y[k]    = 1/c_k sum_{t = k s}^{min(k s + s, length) - 1} z[t],   c_k = min(s, length - k s)
    length' = min(ceil(length / s), max_frames)

:class:`FoldFeatures` does this once for every utterance of a fold and keeps the result as one
tensor ``[N, T', D]`` (plus lengths) on the training device, so a batch is an index gather with
no per-sample Python; a batch is cropped to its longest utterance (the encoders mask padding).
When the tensor would not fit (more than half of the free memory of the device, in float32 and
then in float16), it falls back to reading each batch from the memory-mapped cache through the
same :func:`prepare_rows`, with a warning; both paths give the same numbers.

Built tensors are kept per process, the most recently used first, while they take at most a
quarter of the free memory of their device (at least the last one), keyed by (cache, normaliser,
stride, crop, device): the runs of one fold in a grid (its variants, architectures and readings)
build it once.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hcld_lib.features.cache import FeatureCache
from hcld_lib.features.normalizer import FeatureNormalizer

_CHUNK = 256  # rows normalised and pooled at once (bounds the float32 temporaries)
_KEEP_SHARE = 4  # built fold tensors are kept while they take at most 1/4 of the free memory


def prepare_rows(
    cache: FeatureCache, rows: np.ndarray, normalizer: FeatureNormalizer, frame_stride: int = 1,
    max_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised, pooled, cropped features of cache ``rows`` (formula in the module docstring).

    Returns ``(x [n, T', D] or [n, L, T', D] float32, lengths [n] int64 >= 1)``, frames at and
    after each length zero; ``T' = min(ceil(T / frame_stride), max_frames)``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    s = int(frame_stride)
    t = cache.max_frames
    t_out = -(-t // s)
    keep = t_out if max_frames is None else min(t_out, int(max_frames))
    shape = (len(rows), *cache.array.shape[1:-2], keep, cache.feature_dim)
    out = np.zeros(shape, dtype=np.float32)
    lengths = np.asarray(cache.lengths[rows], dtype=np.int64)
    for start in range(0, len(rows), _CHUNK):
        part = slice(start, start + _CHUNK)
        order = np.argsort(rows[part], kind="stable")  # sorted reads of the memmap are faster
        x = np.empty((len(order), *cache.array.shape[1:]), dtype=np.float32)
        x[order] = cache.array[rows[part][order]]
        x = normalizer.transform(x)
        n = lengths[part]
        valid = np.arange(t)[None, :] < n[:, None]  # [b, T]
        x = np.where(valid.reshape(len(n), *([1] * (x.ndim - 3)), t, 1), x, np.float32(0.0))
        if s > 1:
            if t_out * s > t:
                widths = [(0, 0)] * (x.ndim - 2) + [(0, t_out * s - t), (0, 0)]
                x = np.pad(x, widths)
            x = x.reshape(*x.shape[:-2], t_out, s, x.shape[-1]).sum(axis=-2)
            counts = np.clip(n[:, None] - np.arange(t_out)[None, :] * s, 1, s)
            x /= counts.astype(np.float32).reshape(len(n), *([1] * (x.ndim - 3)), t_out, 1)
        out[part] = x[..., :keep, :]
    pooled = -(-lengths // s)
    if max_frames is not None:
        pooled = np.minimum(pooled, int(max_frames))
    return out, np.maximum(pooled, 1)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not Linux: assume it fits
        return 1 << 62


class FoldFeatures:
    """The features of ``rows`` of a cache, prepared once, gathered by position.

    ``gather(positions)`` -> ``(x [b, T_b, D] float32, lengths [b])`` on ``device``, where
    ``T_b`` is the longest length in the batch and position ``i`` is ``rows[i]``.

    Args:
        cache, rows, normalizer, frame_stride, max_frames: as :func:`prepare_rows`.
        device: the training device; the tensor lives there when it fits.
        resident: ``"auto"`` (resident when it fits, else the memmap with a warning), ``"on"``
            (resident, float32) or ``"off"`` (read every batch from the memmap).
    """

    def __init__(self, cache: FeatureCache, rows: np.ndarray, normalizer: FeatureNormalizer,
                 frame_stride: int = 1, max_frames: int | None = None,
                 device: torch.device | str = "cpu", resident: str = "auto") -> None:
        if resident not in ("auto", "on", "off"):
            raise ValueError(f"resident={resident!r} is not one of ('auto', 'on', 'off')")
        self.cache, self.rows, self.normalizer = cache, np.asarray(rows, np.int64), normalizer
        self.frame_stride, self.max_frames = int(frame_stride), max_frames
        self.device = torch.device(device)
        t_out = -(-cache.max_frames // self.frame_stride)
        keep = t_out if max_frames is None else min(t_out, int(max_frames))
        per_row = int(np.prod(cache.array.shape[1:-2])) * keep * cache.feature_dim
        need = len(self.rows) * per_row * 4
        budget = _free_bytes(self.device) // 2
        self.dtype = torch.float32 if resident == "on" or need <= budget else (
            torch.float16 if need // 2 <= budget else None)
        if resident == "off" or (resident == "auto" and self.dtype is None):
            if resident == "auto":
                warnings.warn(
                    f"the fold's features ({need / 2**30:.1f} GB in float32) do not fit in half "
                    f"of the free memory of {self.device} ({2 * budget / 2**30:.1f} GB free); "
                    "reading every batch from the memory-mapped cache instead (slower)",
                    stacklevel=2,
                )
            self.x: Tensor | None = None
            self.lengths = torch.as_tensor(self._lengths(), device=self.device)
            return
        x, lengths = prepare_rows(cache, self.rows, normalizer, frame_stride, max_frames)
        self.x = torch.from_numpy(x).to(self.device, self.dtype)
        self.lengths = torch.from_numpy(lengths).to(self.device)

    def _lengths(self) -> np.ndarray:
        n = -(-np.asarray(self.cache.lengths[self.rows], np.int64) // self.frame_stride)
        if self.max_frames is not None:
            n = np.minimum(n, int(self.max_frames))
        return np.maximum(n, 1)

    @property
    def resident(self) -> bool:
        return self.x is not None

    @property
    def nbytes(self) -> int:
        """Memory the resident tensor takes (0 when batches are read from the memmap)."""
        return 0 if self.x is None else self.x.element_size() * self.x.nelement()

    def __len__(self) -> int:
        return len(self.rows)

    def gather(self, positions: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """The batch of ``positions``: features cropped to its longest utterance, and lengths."""
        if self.x is not None:
            idx = torch.as_tensor(positions, device=self.device, dtype=torch.long)
            lengths = self.lengths[idx]
            x = self.x[idx, ..., : int(lengths.max()), :]
            return x.float(), lengths
        pos = np.asarray(positions.cpu() if isinstance(positions, Tensor) else positions)
        x, lengths = prepare_rows(self.cache, self.rows[pos], self.normalizer,
                                  self.frame_stride, self.max_frames)
        x = torch.from_numpy(np.ascontiguousarray(x[..., : int(lengths.max()), :]))
        pin = self.device.type == "cuda"
        x = (x.pin_memory() if pin else x).to(self.device, non_blocking=pin)
        return x, torch.from_numpy(lengths).to(self.device)


_BUILT: OrderedDict[tuple, FoldFeatures] = OrderedDict()


def fold_features(cache: FeatureCache, rows: np.ndarray, normalizer: FeatureNormalizer,
                  frame_stride: int = 1, max_frames: int | None = None,
                  device: torch.device | str = "cpu", resident: str = "auto") -> FoldFeatures:
    """:class:`FoldFeatures`, reused when this process built the same ones recently."""
    state = normalizer.state_dict()
    digest = hashlib.sha1(np.asarray(rows, np.int64).tobytes() + state["mean"].tobytes()
                          + state["std"].tobytes()).hexdigest()
    key: tuple[Any, ...] = (str(cache.path), digest, int(frame_stride), max_frames,
                            str(torch.device(device)), resident)
    if key in _BUILT:
        _BUILT.move_to_end(key)
        return _BUILT[key]
    built = FoldFeatures(cache, rows, normalizer, frame_stride, max_frames, device, resident)
    _BUILT[key] = built
    budget = _free_bytes(built.device) // _KEEP_SHARE
    while len(_BUILT) > 1 and sum(f.nbytes for f in _BUILT.values()) > budget:
        _BUILT.popitem(last=False)
    return built
