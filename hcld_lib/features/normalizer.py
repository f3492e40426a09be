"""Per-dimension feature standardisation, fitted on a fold's training rows only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hcld_lib.features.cache import FeatureCache
from hcld_lib.io import HcldError


class FeatureNormalizer:
    """Per-dimension standardisation ``(x - mean) / std``, fitted on chosen rows only.

    Statistics are taken over the VALID frames of the given rows (a fold's training part; never
    its test part), streamed row by row in float64 around a shift (the first row's mean) so that
    memory stays at one row:

        mean_d = (1 / F) * sum_{r, t < len_r} x[r, t, d],   F = sum_r len_r
        std_d  = max(sqrt(mean_d(x^2) - mean_d(x)^2), eps)

    Shapes: ``mean``/``std`` are ``[D]`` for single-layer caches and ``[L, 1, D]`` (one set per
    layer) for ``layer="all"`` caches, so both broadcast over ``[..., T, D]`` / ``[..., L, T, D]``.
    """

    def __init__(
        self, mean: np.ndarray | None = None, std: np.ndarray | None = None, eps: float = 1e-5
    ) -> None:
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self.std = None if std is None else np.asarray(std, dtype=np.float32)
        self.eps = float(eps)

    def fit(self, cache: FeatureCache, rows: Sequence[int] | np.ndarray) -> FeatureNormalizer:
        """Compute mean/std over the valid frames of ``cache.array[rows]``; returns self."""
        rows = np.unique(np.asarray(rows).ravel())
        if rows.size == 0:
            raise HcldError(
                "FeatureNormalizer.fit needs at least one row (the fold's training rows)"
            )
        if not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= len(cache):
            raise HcldError(f"rows must be integer row indices in 0..{len(cache) - 1}")
        arr, lengths = cache.array, cache.lengths
        shift: np.ndarray | None = None
        s = ss = None
        count = 0
        for r in rows:
            t = int(lengths[r])
            x = np.asarray(arr[r][..., :t, :], dtype=np.float64)  # [t, D] or [L, t, D]
            if shift is None:
                shift = x.mean(axis=-2)
                s = np.zeros_like(shift)
                ss = np.zeros_like(shift)
            x = x - shift[..., None, :]
            s += x.sum(axis=-2)
            ss += np.einsum("...td,...td->...d", x, x)
            count += t
        m = s / count
        var = np.maximum(ss / count - m * m, 0.0)
        mean, std = shift + m, np.maximum(np.sqrt(var), self.eps)
        if mean.ndim == 2:  # [L, D] -> [L, 1, D]
            mean, std = mean[:, None, :], std[:, None, :]
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)
        return self

    def transform(
        self, x: np.ndarray | torch.Tensor, lengths: np.ndarray | torch.Tensor | None = None
    ) -> np.ndarray | torch.Tensor:
        """``(x - mean) / std`` for ``x`` ``[..., T, D]`` (or ``[..., L, T, D]``).

        With ``lengths`` ``[B]`` (x batched ``[B, T, D]`` / ``[B, L, T, D]``), frames at
        ``t >= lengths[b]`` are set to zero again after the shift.
        """
        if self.mean is None or self.std is None:
            raise HcldError("FeatureNormalizer is not fitted: call fit(cache, train_rows) first")
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            mean = torch.as_tensor(self.mean, device=x.device, dtype=dtype)
            std = torch.as_tensor(self.std, device=x.device, dtype=dtype)
            out = (x.to(dtype) - mean) / std
            if lengths is not None:
                lengths = torch.as_tensor(lengths, device=x.device)
                keep = (
                    torch.arange(x.shape[-2], device=x.device)[None, :] < lengths[:, None]
                )  # [B, T]
                keep = keep.view(keep.shape[0], *([1] * (x.ndim - 3)), keep.shape[1], 1)
                out = out * keep.to(dtype)
            return out
        x = np.asarray(x)
        out = (x.astype(np.float32, copy=False) - self.mean) / self.std
        if lengths is not None:
            lengths = np.asarray(lengths)
            keep = np.arange(x.shape[-2])[None, :] < lengths[:, None]
            keep = keep.reshape(keep.shape[0], *([1] * (x.ndim - 3)), keep.shape[1], 1)
            out = out * keep
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"mean", "std"}`` as float32 arrays (save with ``np.savez`` or ``torch.save``)."""
        if self.mean is None or self.std is None:
            raise HcldError("FeatureNormalizer is not fitted: nothing to save")
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureNormalizer:
        """Rebuild from :meth:`state_dict` output."""
        return cls(np.asarray(state["mean"]), np.asarray(state["std"]))
