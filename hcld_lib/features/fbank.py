"""The embedded default backbone: 80 Kaldi log-mel filterbanks (no weights).

7.5 s at 16 kHz gives ``T = 1 + (120000 - 400) // 320 = 374`` frames, the same as HuBERT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hcld_lib.features.backbone import Backbone


class FbankBackbone(Backbone):
    """80 Kaldi log-mel filterbank energies, 25 ms window, 20 ms hop (no weights).

    The Kaldi recipe of ``torchaudio.compliance.kaldi.fbank`` (defaults, no dither), batched:
    each 25 ms frame (snip edges) has its mean removed, pre-emphasis 0.97, a povey window
    (``hann ** 0.85``), is zero-padded to 512 points; its power spectrum goes through 80
    triangular mel filters (20 Hz .. Nyquist) and ``log(max(., eps))``. The waveform is on the
    16-bit scale (x 32768). Every step is local to a frame, and only frames inside a clip's valid
    samples are kept, so padding never enters: ``T = 1 + (n - win) // hop``.
    """

    n_mels = 80
    frame_length_ms = 25.0
    frame_shift_ms = 20.0
    preemphasis = 0.97

    def __init__(self, sample_rate: int = 16000) -> None:
        self.spec = "fbank"
        self.sample_rate = int(sample_rate)
        self.num_layers = 1
        self.feature_dim = self.n_mels
        self.win = int(self.sample_rate * self.frame_length_ms * 0.001)
        self.hop = int(self.sample_rate * self.frame_shift_ms * 0.001)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.min_samples = self.win
        self._window: torch.Tensor | None = None
        self._mel: torch.Tensor | None = None

    def identity(self) -> dict[str, Any]:
        return {
            "type": "kaldi_fbank",
            "n_mels": self.n_mels,
            "frame_length_ms": self.frame_length_ms,
            "frame_shift_ms": self.frame_shift_ms,
            "preemphasis": self.preemphasis,
            "window": "povey",
            "scale": 32768.0,
        }

    def frame_count(self, n_samples: int) -> int:
        n = max(int(n_samples), self.min_samples)
        return 1 + (n - self.win) // self.hop

    def load(self, device: torch.device) -> None:  # no weights; small tensors, CPU
        from torchaudio.compliance import kaldi

        self._window = torch.hann_window(self.win, periodic=False, dtype=torch.float32).pow(0.85)
        banks, _ = kaldi.get_mel_banks(
            self.n_mels, self.n_fft, float(self.sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0
        )
        self._mel = torch.nn.functional.pad(banks.float(), (0, 1)).T.contiguous()  # [F, n_mels]

    def forward(
        self, waves: Sequence[np.ndarray], layers: Sequence[int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        if self._mel is None or self._window is None:
            self.load(torch.device("cpu"))
        frames = np.array([self.frame_count(len(w)) for w in waves], dtype=np.int64)
        x = np.zeros((len(waves), max(len(w) for w in waves)), dtype=np.float32)
        for i, w in enumerate(waves):
            x[i, : len(w)] = w
        with torch.inference_mode():
            strided = torch.from_numpy(x).mul_(32768.0).unfold(1, self.win, self.hop)  # [B, M, win]
            strided = strided - strided.mean(dim=-1, keepdim=True)
            previous = torch.cat([strided[..., :1], strided[..., :-1]], dim=-1)
            strided = (strided - self.preemphasis * previous) * self._window
            power = torch.fft.rfft(strided, n=self.n_fft).abs().pow(2)  # [B, M, n_fft/2 + 1]
            mel = torch.matmul(power, self._mel)
            out = mel.clamp_min(torch.finfo(torch.float32).eps).log()
        return out[:, None], frames
