"""Encoders: padding invariance per architecture, shapes, the two-branch model, layer mixing."""

from __future__ import annotations

import pytest
import torch

from hcld_lib.io import HcldError
from hcld_lib.method.models import (
    ENCODER_ARCHS,
    DualBranchModel,
    LayerWeightedSum,
    TemporalEncoder,
    build_encoder,
    lengths_to_mask,
)

D = 12


def padded_batch(seed: int = 0, extra: int = 7):
    """Utterances of different lengths, padded with large garbage (not zeros) after each length."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([10, 6, 1, 8])
    t = int(lengths.max()) + extra
    x = torch.randn(len(lengths), t, D, generator=g)
    for i, n in enumerate(lengths.tolist()):
        x[i, n:] = 100.0 * torch.randn(t - n, D, generator=g)
    return x, lengths


def small_encoder(arch: str) -> TemporalEncoder:
    torch.manual_seed(0)
    return build_encoder(
        arch, D, embed_dim=16, hidden_dim=16, n_layers=2, dropout=0.1, n_heads=4
    ).eval()


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_padding_does_not_change_the_embedding(arch):
    enc = small_encoder(arch)
    x, lengths = padded_batch()
    for grad_enabled in (False, True):  # no_grad takes the Transformer fast path
        with torch.set_grad_enabled(grad_enabled):
            batch = enc(x, lengths)
            alone = torch.cat([enc(x[i : i + 1, :n], lengths[i : i + 1]) for i, n in
                               enumerate(lengths.tolist())])
            shorter = enc(x[:, : int(lengths.max())], lengths)
        assert batch.shape == (4, 16)
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch, shorter, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events:UserWarning")
def test_transformer_fast_path_equals_regular_path():
    enc = small_encoder("transformer")
    x, lengths = padded_batch(seed=3)
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fast = enc(x, lengths)
    # the inference fast path really ran (so the comparison below is not vacuous)
    assert "aten::_transformer_encoder_layer_fwd" in {e.name for e in prof.events()}
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            regular = enc(x, lengths)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    torch.testing.assert_close(fast, regular, atol=1e-5, rtol=0)
    assert torch.isfinite(fast).all()


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_encoder_deterministic_and_trainable(arch):
    x, lengths = padded_batch()
    outs = []
    for _ in range(2):
        enc = small_encoder(arch).train()
        torch.manual_seed(1)  # same dropout masks
        outs.append(enc(x, lengths))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    outs[1].sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_encoder_input_checks():
    enc = small_encoder("cnn")
    x, lengths = padded_batch()
    with pytest.raises(HcldError, match=r"lengths must lie in \[1"):
        enc(x, torch.tensor([3, 0, 2, 1]))
    with pytest.raises(HcldError, match="lengths must lie"):
        enc(x, torch.tensor([3, 99, 2, 1]))
    with pytest.raises(HcldError, match=f"expects x of shape \\[B, T, {D}\\]"):
        enc(x[..., :5], lengths)
    with pytest.raises(HcldError, match="unknown encoder arch"):
        build_encoder("gru", D)
    with pytest.raises(HcldError, match="divisible by n_heads"):
        build_encoder("transformer", D, hidden_dim=18, n_heads=4)


def test_lengths_to_mask():
    mask = lengths_to_mask(torch.tensor([2, 3]), 4)
    assert mask.tolist() == [[True, True, False, False], [True, True, True, False]]


def test_dual_branch_outputs_and_mixed_archs():
    torch.manual_seed(0)
    model = DualBranchModel(
        D, n_emotions=4, n_speakers=5, emotion_arch="transformer", speaker_arch="lstm",
        embed_dim=16, hidden_dim=16, n_layers=1,
    ).eval()
    assert isinstance(model.emotion_encoder, TemporalEncoder)
    assert model.emotion_encoder.arch == "transformer" and model.speaker_encoder.arch == "lstm"
    x, lengths = padded_batch()
    out = model(x, lengths)
    assert out["x_e"].shape == (4, 16) and out["x_s"].shape == (4, 16)
    assert out["emotion_logits"].shape == (4, 4) and out["speaker_logits"].shape == (4, 5)
    # the emotion encoder's weights load into a fresh model (the §6 pretraining route)
    other = DualBranchModel(D, 4, 5, "transformer", "lstm", 16, 16, n_layers=1).eval()
    other.emotion_encoder.load_state_dict(model.emotion_encoder.state_dict())
    torch.testing.assert_close(other(x, lengths)["x_e"], out["x_e"])


def test_emo_only_model_has_no_speaker_branch():
    model = DualBranchModel(D, 4, 0, "cnn", embed_dim=8, hidden_dim=8, speaker_branch=False)
    out = model(*padded_batch())
    assert out["x_s"] is None and out["speaker_logits"] is None
    assert out["x_e"].shape == (4, 8)
    assert not any(name.startswith("speaker") for name, _ in model.named_parameters())


def test_layer_weighted_sum_and_multi_layer_input():
    mix = LayerWeightedSum(3)
    x = torch.randn(2, 3, 5, D)
    # zero-initialised weights: softmax = 1/3 each -> the mean of the layers
    torch.testing.assert_close(mix(x), x.mean(dim=1))
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.0, 50.0, 0.0]))
    torch.testing.assert_close(mix(x), x[:, 1], atol=1e-5, rtol=0)

    torch.manual_seed(0)
    model = DualBranchModel(D, 4, 3, "cnn", embed_dim=8, hidden_dim=8, n_layers=1, n_layers_in=3)
    lengths = torch.tensor([5, 2])
    out = model(x, lengths)
    assert out["x_e"].shape == (2, 8)
    (out["x_e"].sum() + out["x_s"].sum()).backward()
    # each branch mixes the layers with its own weights
    assert model.emotion_layers.weights.grad is not None
    assert model.speaker_layers.weights.grad is not None
    assert model.emotion_layers is not model.speaker_layers
    with pytest.raises(HcldError, match="4-D input"):
        model(x[:, 0], lengths)


def test_the_bilstm_equals_nn_lstm_over_a_packed_sequence():
    """Same parameters, same outputs on the valid frames as PyTorch's bidirectional LSTM over a
    PackedSequence (the reference for what a padding-free BiLSTM computes)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from hcld_lib.method.models import BLSTMEncoder

    torch.manual_seed(0)
    enc = BLSTMEncoder(6, embed_dim=8, hidden_dim=5, n_layers=2, dropout=0.0).eval()
    ref = torch.nn.LSTM(6, 5, num_layers=2, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for k in range(2):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{k}").copy_(getattr(enc.forward_layers[k], f"{name}_l0"))
                getattr(ref, f"{name}_l{k}_reverse").copy_(
                    getattr(enc.backward_layers[k], f"{name}_l0"))
    x = torch.randn(4, 9, 6)
    lengths = torch.tensor([9, 4, 7, 1])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    ours = enc.frames(x, mask, lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    theirs, _ = pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=9)
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-5, atol=1e-6)
    assert torch.all(ours[~mask] == 0)
