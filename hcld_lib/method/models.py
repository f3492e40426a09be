"""The model: temporal encoders over frozen features, and the two branches X_e and X_s.

Every encoder maps frame features ``x [B, T, D]`` with valid lengths ``lengths [B]`` to one
utterance embedding ``[B, embed_dim]``. Padding never changes the result:

* ``cnn``: the padded frames are set to zero before every convolution (so a valid frame near the
  end sees exactly the zeros that the convolution's own zero padding would give it) and the
  pooling is masked;
* ``lstm``: a bidirectional LSTM whose backward direction runs over each sequence reversed within
  its valid frames, so it starts at the last *valid* frame (as over a ``PackedSequence``);
* ``transformer``: sinusoidal positions and ``src_key_padding_mask``; nested tensors are turned
  off, and both the fast (inference) path and the regular path give the same embedding.

Pooling is a masked mean over the valid frames; dropout and a linear map then give the embedding.

:class:`DualBranchModel` gives the emotion embedding X_e and, unless ``speaker_branch=False``
(the EMO-only baseline), the speaker embedding X_s, each with a linear classification head, in
one of two layouts (the ``branches`` switch; see the README's open-points table):

* ``"separate"`` (default): two encoders that share no parameter, X_e = Enc_e(x), X_s = Enc_s(x).
  The frozen features are not trained, so only a loss term that reads both X_e and X_s (the
  orthogonality penalty) couples the branches; every other term reaches one branch only.
* ``"shared"``: one encoder, then a two-layer projection per branch,
  X_e = P_e(Enc(x)), X_s = P_s(Enc(x)) with ``P(h) = W_2 relu(W_1 h + b_1) + b_2``: the paper's
  single ``X_i = Encoder(x_i)`` from which X_e and X_s are extracted, where every term reaches
  the shared encoder.

With several SSL layers in the input (``[B, L, T, D]``) each encoder first takes its own
learnable softmax-weighted sum of the layers (:class:`LayerWeightedSum`, as in SUPERB), because
emotion and speaker information peak at different depths of SSL models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcld_lib.io import HcldError

ENCODER_ARCHS: tuple[str, ...] = ("cnn", "lstm", "transformer")
BRANCHES: tuple[str, ...] = ("separate", "shared")


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Valid-frame mask ``[B, max_len]`` (True = valid) from ``lengths [B]``.

    Raises :class:`HcldError` when a length is < 1 or > ``max_len`` (an empty utterance has no
    embedding; a length beyond the padded size means features and lengths do not match).
    """
    lengths = lengths.to(torch.long)
    if lengths.dim() != 1:
        raise HcldError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > max_len):
        raise HcldError(
            f"lengths must lie in [1, {max_len}] (the padded number of frames), got min "
            f"{int(lengths.min())} and max {int(lengths.max())}; check the feature cache lengths"
        )
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.to(steps.device).unsqueeze(1)


def sinusoidal_positions(n_positions: int, dim: int, device=None, dtype=None) -> Tensor:
    """Fixed sinusoidal position encodings ``[n_positions, dim]`` (Vaswani et al. 2017).

    ``P[t, 2k] = sin(t / 10000^(2k/dim))``, ``P[t, 2k+1] = cos(t / 10000^(2k/dim))``.
    """
    position = torch.arange(n_positions, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(n_positions, dim, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return pe.to(dtype) if dtype is not None else pe


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of the valid frames: ``sum_t m_t h_t / sum_t m_t`` for ``h [B, T, C]``, ``mask [B, T]``
    -> ``[B, C]``."""
    m = mask.unsqueeze(-1).to(h.dtype)  # [B, T, 1]
    return (h * m).sum(1) / m.sum(1)


class TemporalEncoder(nn.Module):
    """Base class: ``forward(x [B, T, D], lengths [B]) -> [B, embed_dim]``.

    Subclasses implement :meth:`frames` (frame-level features ``[B, T, C]`` that are exact on
    the valid frames whatever the padding holds); pooling and the output projection are shared.
    """

    arch: str = ""

    def __init__(
        self, input_dim: int, embed_dim: int, out_channels: int, dropout: float
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.embed_dim = embed_dim
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(out_channels, embed_dim)

    def frames(self, x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``x [B, T, D]`` float, ``lengths [B]`` long (valid frames) -> ``[B, embed_dim]``."""
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise HcldError(
                f"{type(self).__name__} expects x of shape [B, T, {self.input_dim}], "
                f"got {tuple(x.shape)}"
            )
        if lengths.shape[0] != x.shape[0]:
            raise HcldError(f"lengths has {lengths.shape[0]} entries for a batch of {x.shape[0]}")
        mask = lengths_to_mask(lengths, x.shape[1]).to(x.device)
        h = self.frames(x, mask, lengths)
        return self.proj(self.dropout(masked_mean(h, mask)))


class CNNEncoder(TemporalEncoder):
    """``n_layers`` x [zero padding frames -> Conv1d(k, same) -> LayerNorm -> ReLU -> Dropout].

    LayerNorm normalises each frame over channels (not over the batch or time), so it never mixes
    padded and valid frames.
    """

    arch = "cnn"

    def __init__(
        self,
        input_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        kernel_size: int = 5,
    ) -> None:
        super().__init__(input_dim, embed_dim, hidden_dim, dropout)
        if kernel_size % 2 != 1:
            raise HcldError(f"kernel_size={kernel_size} must be odd (same-length convolutions)")
        dims = [input_dim] + [hidden_dim] * n_layers
        self.convs = nn.ModuleList(
            nn.Conv1d(dims[i], dims[i + 1], kernel_size, padding=kernel_size // 2)
            for i in range(n_layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(n_layers))
        self.frame_dropout = nn.Dropout(dropout)

    def frames(self, x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        h = x
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = conv((h * keep).transpose(1, 2)).transpose(1, 2)  # [B, T, C]
            h = self.frame_dropout(F.relu(norm(h)))
        return h


def reverse_valid(h: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence of ``h [B, T, C]`` reversed within its valid frames, padding left at the
    end (zero): ``out[b, t] = h[b, lengths[b] - 1 - t]`` for ``t < lengths[b]``, else 0. It is
    its own inverse."""
    t = torch.arange(h.shape[1], device=h.device)
    index = (lengths.to(h.device)[:, None] - 1 - t[None, :]).clamp_min(0)  # [B, T]
    valid = (t[None, :] < lengths.to(h.device)[:, None]).unsqueeze(-1)
    return torch.where(valid, h.gather(1, index.unsqueeze(-1).expand_as(h)), h.new_zeros(()))


class BLSTMEncoder(TemporalEncoder):
    """Bidirectional LSTM, ``n_layers`` layers of ``hidden_dim`` per direction -> ``2*hidden``.

    Each layer runs a forward LSTM over the zero-padded frames and a backward LSTM over each
    sequence reversed within its valid frames (:func:`reverse_valid`), so the backward direction
    starts at the last *valid* frame; the two outputs are concatenated frame by frame (the
    backward one reversed back). This is the bidirectional LSTM of ``nn.LSTM`` over a
    ``PackedSequence`` (the same parameters, the same outputs on valid frames; tested), on
    padded tensors, which PyTorch runs with its fused CPU kernels: about 3x faster to train at
    the paper's size on the CPU. Dropout between layers as in ``nn.LSTM``.
    """

    arch = "lstm"

    def __init__(
        self,
        input_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(input_dim, embed_dim, 2 * hidden_dim, dropout)
        sizes = [input_dim] + [2 * hidden_dim] * (n_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(d, hidden_dim, batch_first=True)
                                            for d in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(d, hidden_dim, batch_first=True)
                                             for d in sizes)
        self.layer_dropout = nn.Dropout(dropout if n_layers > 1 else 0.0)

    def frames(self, x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        h = x * keep
        for k, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers,
                                           strict=True)):
            if k:
                h = self.layer_dropout(h)
            ahead, _ = fwd(h)
            behind, _ = bwd(reverse_valid(h, lengths))
            h = torch.cat([ahead, reverse_valid(behind, lengths)], dim=-1) * keep
        return h


class TransformerEncoder(TemporalEncoder):
    """Linear(D -> hidden) + sinusoidal positions -> pre-LN Transformer encoder -> LayerNorm.

    Padded frames are excluded as keys with ``src_key_padding_mask``. ``enable_nested_tensor``
    is off: with it, PyTorch may drop padded positions in inference and take a different kernel
    path than in training; the output on valid frames is the same either way (tested).
    """

    arch = "transformer"

    def __init__(
        self,
        input_dim: int,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        n_heads: int = 4,
        ff_dim: int | None = None,
    ) -> None:
        super().__init__(input_dim, embed_dim, hidden_dim, dropout)
        if hidden_dim % n_heads != 0 or hidden_dim % 2 != 0:
            raise HcldError(
                f"transformer hidden_dim={hidden_dim} must be even and divisible by "
                f"n_heads={n_heads}"
            )
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            n_heads,
            dim_feedforward=ff_dim or 4 * hidden_dim,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            n_layers,
            norm=nn.LayerNorm(hidden_dim),
            enable_nested_tensor=False,
        )

    def frames(self, x: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        h = self.input_proj(x)
        h = h + sinusoidal_positions(x.shape[1], h.shape[-1], device=h.device, dtype=h.dtype)
        return self.encoder(self.input_dropout(h), src_key_padding_mask=~mask)


def build_encoder(
    arch: str,
    input_dim: int,
    embed_dim: int = 256,
    hidden_dim: int = 256,
    n_layers: int = 2,
    dropout: float = 0.1,
    n_heads: int = 4,
) -> TemporalEncoder:
    """A temporal encoder ``[B, T, input_dim] -> [B, embed_dim]`` by name.

    ``arch``: ``"cnn"`` (1-D convolutions, kernel 5), ``"lstm"`` (bidirectional, ``hidden_dim``
    per direction) or ``"transformer"`` (``n_heads`` heads, feed-forward ``4 * hidden_dim``);
    ``n_layers`` layers of width ``hidden_dim`` each.
    """
    if arch == "cnn":
        return CNNEncoder(input_dim, embed_dim, hidden_dim, n_layers, dropout)
    if arch == "lstm":
        return BLSTMEncoder(input_dim, embed_dim, hidden_dim, n_layers, dropout)
    if arch == "transformer":
        return TransformerEncoder(
            input_dim, embed_dim, hidden_dim, n_layers, dropout, n_heads
        )
    raise HcldError(f"unknown encoder arch {arch!r}; choose one of {ENCODER_ARCHS}")


class LayerWeightedSum(nn.Module):
    """SUPERB-style learnable layer mix: ``[B, L, T, D] -> [B, T, D]``.

    ``y = sum_l softmax(w)_l x_l`` with ``w`` initialised to zeros (an equal-weight average).
    """

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise HcldError(f"LayerWeightedSum needs n_layers >= 1, got {n_layers}")
        self.n_layers = n_layers
        self.weights = nn.Parameter(torch.zeros(n_layers))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.n_layers:
            raise HcldError(
                f"LayerWeightedSum expects [B, {self.n_layers}, T, D], got {tuple(x.shape)}"
            )
        w = torch.softmax(self.weights, dim=0).to(x.dtype)
        return torch.einsum("bltd,l->btd", x, w)


def projection_head(dim: int) -> nn.Sequential:
    """A branch's own layers over a shared encoder: ``P(h) = W_2 relu(W_1 h + b_1) + b_2``."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class DualBranchModel(nn.Module):
    """The emotion branch (+ the speaker branch), each ending in a linear classification head.

    ``forward(x, lengths)`` with ``x [B, T, D]`` (or ``[B, L, T, D]`` when ``n_layers_in > 1``)
    and ``lengths [B]`` returns a dict:

    * ``x_e`` ``[B, embed_dim]``: emotion embedding X_e,
    * ``x_s`` ``[B, embed_dim]`` or ``None``: speaker embedding X_s,
    * ``emotion_logits`` ``[B, n_emotions]``,
    * ``speaker_logits`` ``[B, n_speakers]`` or ``None``.

    ``branches="separate"``: ``emotion_encoder`` and ``speaker_encoder`` (``speaker_arch=None``
    uses ``emotion_arch``), each after its own layer mix. ``branches="shared"``: one ``encoder``
    (``emotion_arch``; the two branches cannot differ) after one layer mix, then
    ``emotion_projection`` and ``speaker_projection`` (:func:`projection_head`).
    ``speaker_branch=False`` is the EMO-only model. :meth:`emotion_path` is what X_e is computed
    by (the part a pretrained emotion encoder fills, see :meth:`load_emotion_state`).
    """

    def __init__(
        self,
        input_dim: int,
        n_emotions: int,
        n_speakers: int,
        emotion_arch: str = "cnn",
        speaker_arch: str | None = None,
        embed_dim: int = 256,
        hidden_dim: int = 256,
        n_layers: int = 2,
        dropout: float = 0.1,
        n_heads: int = 4,
        n_layers_in: int = 1,
        speaker_branch: bool = True,
        branches: str = "separate",
    ) -> None:
        super().__init__()
        if n_emotions < 2:
            raise HcldError(f"n_emotions={n_emotions}: a classifier needs at least 2 classes")
        if speaker_branch and n_speakers < 1:
            raise HcldError(f"n_speakers={n_speakers} with speaker_branch=True; need >= 1")
        if branches not in BRANCHES:
            raise HcldError(f"branches={branches!r} is not one of {BRANCHES}")
        if branches == "shared" and speaker_arch not in (None, emotion_arch):
            raise HcldError(
                f"branches='shared' has one encoder: speaker_arch={speaker_arch!r} cannot differ "
                f"from emotion_arch={emotion_arch!r}; use branches='separate' for two encoders"
            )
        self.n_layers_in = n_layers_in
        self.speaker_branch = speaker_branch
        self.branches = branches
        kw = dict(input_dim=input_dim, embed_dim=embed_dim, hidden_dim=hidden_dim,
                  n_layers=n_layers, dropout=dropout, n_heads=n_heads)

        def mix() -> LayerWeightedSum | None:
            return LayerWeightedSum(n_layers_in) if n_layers_in > 1 else None

        if branches == "shared":
            self.layers = mix()
            self.encoder = build_encoder(emotion_arch, **kw)
            self.emotion_projection = projection_head(embed_dim)
            self.emotion_head = nn.Linear(embed_dim, n_emotions)
            if speaker_branch:
                self.speaker_projection = projection_head(embed_dim)
                self.speaker_head = nn.Linear(embed_dim, n_speakers)
            return
        self.emotion_layers = mix()
        self.emotion_encoder = build_encoder(emotion_arch, **kw)
        self.emotion_head = nn.Linear(embed_dim, n_emotions)
        if speaker_branch:
            self.speaker_layers = mix()
            self.speaker_encoder = build_encoder(speaker_arch or emotion_arch, **kw)
            self.speaker_head = nn.Linear(embed_dim, n_speakers)

    def emotion_path(self) -> nn.ModuleDict:
        """The modules X_e is computed by (without the classification head), by name."""
        names = (("layers", "encoder", "emotion_projection") if self.branches == "shared"
                 else ("emotion_layers", "emotion_encoder"))
        return nn.ModuleDict({n: getattr(self, n) for n in names if getattr(self, n) is not None})

    def emotion_state(self) -> dict[str, Tensor]:
        """The state of :meth:`emotion_path` (what pretraining saves), on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.emotion_path().state_dict().items()}

    def load_emotion_state(self, state: dict[str, Tensor]) -> None:
        """Load a state saved by :meth:`emotion_state` of a model with the same emotion path."""
        self.emotion_path().load_state_dict(state)

    @staticmethod
    def _mixed(x: Tensor, mix: LayerWeightedSum | None) -> Tensor:
        return x if mix is None else mix(x)

    def forward(self, x: Tensor, lengths: Tensor) -> dict[str, Tensor | None]:
        want = 4 if self.n_layers_in > 1 else 3
        if x.dim() != want:
            raise HcldError(
                f"DualBranchModel(n_layers_in={self.n_layers_in}) expects a {want}-D input, "
                f"got shape {tuple(x.shape)}"
            )
        x_s = None
        if self.branches == "shared":
            h = self.encoder(self._mixed(x, self.layers), lengths)
            x_e = self.emotion_projection(h)
            if self.speaker_branch:
                x_s = self.speaker_projection(h)
        else:
            x_e = self.emotion_encoder(self._mixed(x, self.emotion_layers), lengths)
            if self.speaker_branch:
                x_s = self.speaker_encoder(self._mixed(x, self.speaker_layers), lengths)
        return {
            "x_e": x_e,
            "x_s": x_s,
            "emotion_logits": self.emotion_head(x_e),
            "speaker_logits": None if x_s is None else self.speaker_head(x_s),
        }
