"""What training reads: normalised, pooled features, resident or read per batch, the same."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hcld_lib.features.normalizer import FeatureNormalizer
from hcld_lib.features.resident import FoldFeatures, prepare_rows


def _cache(x: np.ndarray, lengths: list[int]) -> SimpleNamespace:
    """Enough of a FeatureCache for prepare_rows: array [N, (L,) T, D], lengths, sizes."""
    return SimpleNamespace(array=x.astype(np.float16), lengths=np.asarray(lengths),
                           max_frames=x.shape[-2], feature_dim=x.shape[-1], path="mem")


IDENTITY = FeatureNormalizer(np.zeros(2, np.float32), np.ones(2, np.float32))
IDENTITY_3 = FeatureNormalizer(np.zeros(3, np.float32), np.ones(3, np.float32))


def test_pooling_averages_valid_frames_only_by_hand():
    x = np.arange(1, 8, dtype=np.float32)[:, None].repeat(2, axis=1)  # frames 1..7, D = 2
    x[5:] = 99.0  # padding: length 5
    cache = _cache(x[None], [5])
    pooled, lengths = prepare_rows(cache, [0], IDENTITY, frame_stride=2)
    # windows (1,2) (3,4) (5) (pad) -> 1.5, 3.5, 5, 0; ceil(5 / 2) = 3 valid
    np.testing.assert_allclose(pooled[0, :, 0], [1.5, 3.5, 5.0, 0.0])
    assert lengths.tolist() == [3]
    same, n = prepare_rows(cache, [0], IDENTITY, frame_stride=1)
    assert n.tolist() == [5] and np.all(same[0, 5:] == 0)
    cropped, n = prepare_rows(cache, [0], IDENTITY, frame_stride=2, max_frames=2)
    assert cropped.shape == (1, 2, 2) and n.tolist() == [2]


def test_layers_and_normalisation():
    x = np.arange(1, 8, dtype=np.float32)[:, None].repeat(2, axis=1)
    cache = _cache(np.stack([x, 2 * x])[None], [5])  # [1, L=2, T=7, D=2]
    norm = FeatureNormalizer(np.ones((2, 1, 2), np.float32), 2 * np.ones((2, 1, 2), np.float32))
    pooled, n = prepare_rows(cache, [0], norm, frame_stride=2)
    assert pooled.shape == (1, 2, 4, 2) and n.tolist() == [3]
    # layer 1, window (1, 2): ((2 - 1) / 2 + (4 - 1) / 2) / 2 = 1.0; padding stays 0
    np.testing.assert_allclose(pooled[0, 1, :, 1], [1.0, 3.0, 4.5, 0.0])


@pytest.mark.parametrize("stride", [1, 3])
def test_resident_and_memmap_batches_are_identical(stride):
    rng = np.random.default_rng(0)
    lengths = [9, 4, 12, 1, 7]
    x = rng.normal(size=(5, 12, 3)).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    cache = _cache(x, lengths)
    norm = FeatureNormalizer(rng.normal(size=3).astype(np.float32),
                             rng.uniform(0.5, 2, size=3).astype(np.float32))
    rows = np.array([4, 0, 2, 1, 3])
    resident = FoldFeatures(cache, rows, norm, stride, None, "cpu", resident="on")
    per_batch = FoldFeatures(cache, rows, norm, stride, None, "cpu", resident="off")
    assert resident.resident and not per_batch.resident
    for positions in ([0, 1], [3], [2, 4, 0]):
        a, la = resident.gather(positions)
        b, lb = per_batch.gather(positions)
        assert torch.equal(a, b) and torch.equal(la, lb)
        assert a.shape[1] == int(la.max())  # cropped to the batch's longest utterance
    full, _ = prepare_rows(cache, rows, norm, stride)
    a, la = resident.gather([1])  # position 1 = cache row 0
    np.testing.assert_array_equal(a[0].numpy(), full[1, : int(la[0])])


def test_auto_keeps_float32_then_float16_then_falls_back_to_the_memmap_with_a_warning(
        monkeypatch):
    """``resident="auto"`` keeps the fold in float32 when it takes at most half the free memory,
    in float16 when only that fits, and otherwise reads batches from the memmap, saying so."""
    import hcld_lib.features.resident as resident_mod

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    cache = _cache(x, [6, 6, 6, 6])
    rows = np.arange(4)
    need = 4 * 6 * 3 * 4  # rows x frames x dims x float32 bytes
    reference = FoldFeatures(cache, rows, IDENTITY_3, 1, None, "cpu", resident="on")

    def with_free(free: int) -> FoldFeatures:
        monkeypatch.setattr(resident_mod, "_free_bytes", lambda device: free)
        return FoldFeatures(cache, rows, IDENTITY_3, 1, None, "cpu", resident="auto")

    roomy = with_free(2 * need)
    assert roomy.resident and roomy.dtype == torch.float32 and roomy.nbytes == need
    half = with_free(need)  # half of it is the budget: only float16 fits
    assert half.resident and half.dtype == torch.float16 and half.nbytes == need // 2
    with pytest.warns(UserWarning, match="do not fit in half of the free memory of cpu"):
        tight = with_free(need // 2)
    assert not tight.resident and tight.nbytes == 0
    for features in (roomy, half, tight):
        a, la = features.gather([2, 0])
        b, lb = reference.gather([2, 0])
        assert a.dtype == torch.float32 and torch.equal(la, lb)
        # the cache holds float16: its values survive the float16 copy unchanged
        assert torch.equal(a, b)

