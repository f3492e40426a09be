"""Frozen features: the encoder runs once per corpus, writes a cache, and training reads the cache.

    table --load_audio--> waveforms --backbone--> [T, D] per utterance --> cache folder (float16)

Backbones (the ``backbone`` string of :func:`extract_features`):

- ``"fbank"``: 80 log-mel filterbank energies (Kaldi-style, 25 ms window, 20 ms hop, on the
  16-bit sample scale); 7.5 s at 16 kHz gives ``T = 1 + (120000 - 400) // 320 = 374`` frames,
  the same as HuBERT. Needs no weights: the embedded default.
- ``"torchaudio:hubert_base"``: torchaudio's ``HUBERT_BASE`` (HuBERT-base, LibriSpeech 960 h, the
  paper's encoder), D = 768, 13 hidden states (0 = transformer input, 12 = last layer). The weights
  come from ``$TORCH_HOME/hub/checkpoints/hubert_fairseq_base_ls960.pth`` (where
  ``torch.hub`` caches them) or an explicit ``checkpoint`` path; nothing is downloaded.
- ``"hf:<model name or folder>"``: any Hugging Face speech encoder that ``AutoModel`` loads
  (HuBERT, WavLM, wav2vec 2.0, data2vec-audio), ``num_hidden_layers + 1`` hidden states. With
  ``HF_HUB_OFFLINE=1`` only local files are used.

Frame counts of the SSL encoders follow their convolutional front end: for each layer
``(kernel k, stride s)``, ``n -> floor((n - k) / s) + 1``; HuBERT's stack is
k = (10, 3, 3, 3, 3, 2, 2), s = (5, 2, 2, 2, 2, 2, 2), so 120000 samples -> 374 frames.

Padding. Each utterance is cut to its valid samples before the encoder. For ``torchaudio``
the convolutional front end runs on each utterance's own samples (its GroupNorm would otherwise
average over padding) and the transformer gets the frame lengths as an attention mask, so a
clip's features do not depend on its batch-mates. Hugging Face models get an ``attention_mask``
when their front end uses layer norm (``feat_extract_norm == "layer"``); otherwise they are
zero-padded without a mask, as those checkpoints expect (a small dependence on batch-mates
remains, kept small by batching utterances of similar length).

Cache folder ``cache_dir/<backbone-slug>-<key[:12]>/``:

- ``features.npy``: float16, ``[N, T, D]`` (``[N, L, T, D]`` for ``layer="all"``), rows in table
  order, frames at and after the valid length are zero. Opened as a read-only memmap.
- ``index.csv``: ``utterance_id, row, length`` (valid frames) and ``crc32`` of each row's bytes.
- ``table.csv``: the utterance table that made the cache.
- ``meta.json``: everything that made it (the key and its parts); written last, atomically: a
  folder without it is incomplete and is resumed by :func:`extract_features`.
- ``progress.npz`` (only while extracting): which rows are done, flushed after every batch.

The key hashes the table (ids, labels, paths, each file's size and mtime), the backbone, the
checkpoint identity (file SHA-256 for torchaudio; config + weights SHA-256 for Hugging Face), the
layer, ``max_seconds``, ``sample_rate`` and :data:`FEATURE_CODE_VERSION`: changing any of them
makes a new cache instead of reusing stale features.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hcld_lib.audio import audio_num_samples, load_audio
from hcld_lib.io import HcldError, atomic_save_npz, atomic_write_json, atomic_write_text

__all__ = [
    "FEATURE_CODE_VERSION",
    "HUBERT_CONV_LAYERS",
    "Backbone",
    "FbankBackbone",
    "TorchaudioHubertBackbone",
    "HFBackbone",
    "FeatureCache",
    "FeatureNormalizer",
    "conv_frame_count",
    "extract_features",
    "get_backbone",
    "hubert_checkpoint_path",
    "hubert_checkpoint_url",
    "open_cache",
]

#: Bump when the numbers a backbone writes change for the same inputs: old caches stop matching.
FEATURE_CODE_VERSION = 1
CACHE_FORMAT = "hcld-feature-cache"
CACHE_FORMAT_VERSION = 1

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
TABLE_COLUMNS = ("utterance_id", "speaker", "emotion", "session", "gender", "path")
_FP16_MAX = float(np.finfo(np.float16).max)


# --------------------------------------------------------------------------- helpers


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


def _min_samples(conv_layers: Sequence[tuple[int, int]]) -> int:
    """Smallest input that yields one frame (the receptive field): 400 samples for HuBERT."""
    m = 1
    for k, s in reversed(conv_layers):
        m = (m - 1) * s + k
    return m


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[memo] = h.hexdigest()
    return _FILE_HASHES[memo]


def _auto_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pad_stack(frames: list[torch.Tensor]) -> torch.Tensor:
    """``[T_i, C]`` tensors -> zero-padded ``[B, max T_i, C]``."""
    return torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)


# --------------------------------------------------------------------------- backbones


class Backbone:
    """A frozen encoder: waveforms in, hidden states out.

    Attributes:
        spec: the backbone string (``"fbank"``, ``"torchaudio:hubert_base"``, ``"hf:..."``).
        sample_rate: the rate the encoder expects (Hz).
        num_layers: how many hidden states can be selected (1 for fbank).
        feature_dim: D.
        min_samples: shortest input that yields one frame; shorter clips are zero-padded to it.
    """

    spec: str
    sample_rate: int
    num_layers: int
    feature_dim: int
    min_samples: int

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
    def slug(self) -> str:
        """Folder-name form of the spec (``torchaudio-hubert_base``, ``hf-<folder name>``)."""
        name = self.spec
        if name.startswith("hf:"):
            target = name[3:]
            local = Path(target).expanduser()
            name = "hf-" + (local.name if local.is_dir() else target)
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.")
        return slug[:48] or "features"


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


def hubert_checkpoint_path() -> Path:
    """Where ``torch.hub`` keeps torchaudio's HuBERT-base weights.

    ``$TORCH_HOME/hub/checkpoints/hubert_fairseq_base_ls960.pth`` (``torch.hub.get_dir()``).
    """
    import torchaudio

    return (
        Path(torch.hub.get_dir())
        / "checkpoints"
        / Path(torchaudio.pipelines.HUBERT_BASE._path).name
    )


def hubert_checkpoint_url() -> str:
    """The URL torchaudio's ``HUBERT_BASE.get_model()`` downloads the weights from."""
    import torchaudio

    path = torchaudio.pipelines.HUBERT_BASE._path
    # same rule as torchaudio.pipelines._wav2vec2.utils._get_state_dict
    return (
        path
        if path.startswith("https")
        else f"https://download.pytorch.org/torchaudio/models/{path}"
    )


class TorchaudioHubertBackbone(Backbone):
    """torchaudio's HuBERT-base (``HUBERT_BASE``): D = 768, hidden states 0..12, 16 kHz.

    The model is built with ``torchaudio.models.hubert_base`` (dropout and layer drop off) and the
    state dict is read with ``torch.load(..., weights_only=True)`` from ``checkpoint`` or
    :func:`hubert_checkpoint_path`. Hidden state 0 is the transformer input (projected
    convolutional features + positional convolution, layer-normed), state ``i`` the output of
    transformer layer ``i``, matching Hugging Face's ``hidden_states``.
    """

    def __init__(
        self, checkpoint: str | os.PathLike | None = None, sample_rate: int = 16000
    ) -> None:
        if int(sample_rate) != 16000:
            raise HcldError(
                f"torchaudio:hubert_base expects 16 kHz audio, got sample_rate={sample_rate}: "
                "use sample_rate=16000 (audio is resampled on loading)."
            )
        self.spec = "torchaudio:hubert_base"
        self.sample_rate = 16000
        self.num_layers = 13
        self.feature_dim = 768
        self.min_samples = _min_samples(HUBERT_CONV_LAYERS)
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else None
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def checkpoint_file(self) -> Path:
        """The checkpoint that will be loaded; raises HcldError (path + URL) if it is absent."""
        path = self.checkpoint if self.checkpoint is not None else hubert_checkpoint_path()
        if not path.is_file():
            url = hubert_checkpoint_url()
            default = hubert_checkpoint_path()
            where = (
                f"the checkpoint given, {path}, does not exist"
                if self.checkpoint is not None
                else f"no HuBERT-base checkpoint at {path}"
            )
            raise HcldError(
                f"torchaudio:hubert_base: {where}. Put the file at {default} (the torch hub cache; "
                f"set TORCH_HOME to move it) or pass checkpoint='/path/to/{default.name}'. "
                f"On a machine with internet, fetch it from {url} (e.g. `curl -L -o {default.name} "
                f"{url}`) and copy it here; nothing is downloaded at run time."
            )
        return path

    def identity(self) -> dict[str, Any]:
        path = self.checkpoint_file()
        return {"type": "torchaudio_hubert_base", "checkpoint_sha256": _sha256_file(path)}

    def frame_count(self, n_samples: int) -> int:
        return conv_frame_count(max(int(n_samples), self.min_samples), HUBERT_CONV_LAYERS)

    def load(self, device: torch.device) -> None:
        import torchaudio

        path = self.checkpoint_file()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError, RuntimeError (bad zip), EOFError (truncated)
            raise HcldError(
                f"cannot read the HuBERT-base checkpoint {path}: {err}. The file is damaged or not "
                f"a state dict: delete it and fetch it again from {hubert_checkpoint_url()}."
            ) from err
        model = torchaudio.models.hubert_base(
            encoder_projection_dropout=0.0,
            encoder_attention_dropout=0.0,
            encoder_ff_interm_dropout=0.0,
            encoder_dropout=0.0,
            encoder_layer_drop=0.0,
        )
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise HcldError(
                f"{path} is not a torchaudio HUBERT_BASE state dict ({str(err)[:300]}): "
                "use the file "
                f"from {hubert_checkpoint_url()}."
            ) from err
        self.model = model.eval().to(device)
        self.device = device

    def forward(
        self, waves: Sequence[np.ndarray], layers: Sequence[int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        if self.model is None:
            raise RuntimeError("call load() before forward()")
        model = self.model
        frames = np.array([self.frame_count(len(w)) for w in waves], dtype=np.int64)
        conv: list[torch.Tensor | None] = [None] * len(waves)
        with torch.inference_mode():
            # convolutional front end per utterance (batched only over equal lengths)
            by_len: dict[int, list[int]] = {}
            for i, w in enumerate(waves):
                by_len.setdefault(len(w), []).append(i)
            for idx in by_len.values():
                x = torch.from_numpy(np.stack([waves[i] for i in idx])).to(self.device)
                feats, _ = model.feature_extractor(x, None)
                for j, i in enumerate(idx):
                    conv[i] = feats[j]
            x = _pad_stack(conv)  # [B, T, 512]
            lengths = torch.as_tensor(frames, device=self.device)
            x, mask = model.encoder._preprocess(x, lengths)  # projection; padded frames zeroed
            transformer = model.encoder.transformer
            x = transformer._preprocess(x)  # + positional conv, layer norm
            hidden = [x]
            for block in transformer.layers[: max(layers)]:
                x, _ = block(x, mask)
                hidden.append(x)
            out = torch.stack([hidden[i] for i in layers], dim=1)
        return out.float().cpu(), frames


def _hf_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


class HFBackbone(Backbone):
    """A Hugging Face speech encoder loaded with ``AutoModel`` from a name or a local folder.

    ``local_files_only`` is used for folders and whenever ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set, so nothing is fetched silently. If the model's preprocessor
    config asks for it (``do_normalize``), each waveform is normalised to zero mean and unit
    variance over its valid samples. Hidden states ``0..num_hidden_layers`` (0 = transformer
    input); the last one is ``last_hidden_state``, the model's output.
    """

    def __init__(self, name: str, sample_rate: int = 16000) -> None:
        from transformers import AutoConfig

        if not name:
            raise HcldError(
                "backbone 'hf:' needs a model name or folder, e.g. 'hf:facebook/hubert-base-ls960'"
            )
        self.spec = f"hf:{name}"
        local = Path(name).expanduser()
        looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
        if local.is_dir():
            self.source = str(local.resolve())
            self.local_only = True
        elif looks_local:
            raise HcldError(
                f"Hugging Face model folder {local} does not exist: check the backbone path."
            )
        else:
            self.source = name
            self.local_only = _hf_offline()
        self.name = name
        try:
            self.config = AutoConfig.from_pretrained(self.source, local_files_only=self.local_only)
        except (OSError, ValueError, KeyError) as err:
            raise self._load_error(err) from err
        cfg = self.config
        if not hasattr(cfg, "conv_kernel") or not hasattr(cfg, "num_hidden_layers"):
            raise HcldError(
                f"{name} is a {type(cfg).__name__}, not a speech encoder with a "
                "convolutional front end (HuBERT, WavLM, wav2vec 2.0, data2vec-audio): "
                "choose one of those."
            )
        self.conv_layers = tuple(zip(cfg.conv_kernel, cfg.conv_stride))
        self.num_layers = int(cfg.num_hidden_layers) + 1
        self.feature_dim = int(cfg.hidden_size)
        self.min_samples = _min_samples(self.conv_layers)
        self.use_attention_mask = getattr(cfg, "feat_extract_norm", "group") == "layer"
        self.do_normalize, model_rate = self._preprocessor()
        if int(sample_rate) != model_rate:
            raise HcldError(
                f"{name} expects {model_rate} Hz audio, got sample_rate={sample_rate}: use "
                f"sample_rate={model_rate} (audio is resampled on loading)."
            )
        self.sample_rate = model_rate
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")
        self._weights_sha256: str | None = None

    def _load_error(self, err: BaseException) -> HcldError:
        from huggingface_hub import constants

        mode = (
            " (local files only: HF_HUB_OFFLINE is set or a folder was given)"
            if self.local_only
            else ""
        )
        reason = " ".join(str(err).split())[:400].rstrip(".")
        return HcldError(
            f"cannot load Hugging Face model '{self.name}'{mode}: {reason}. Either give a "
            "local folder holding config.json and the weights (backbone='hf:/path/to/folder', e.g. "
            "written by `model.save_pretrained(folder)`), or, on a machine with internet, run "
            f"`hf download {self.name}` (or `AutoModel.from_pretrained('{self.name}')`) and copy "
            f"the cache folder to {constants.HF_HUB_CACHE} here."
        )

    def _preprocessor(self) -> tuple[bool, int]:
        """``(do_normalize, sampling_rate)`` from preprocessor_config.json (else False, 16 kHz)."""
        from transformers.utils import cached_file

        try:
            path = cached_file(
                self.source,
                "preprocessor_config.json",
                local_files_only=self.local_only,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError):
            path = None
        if not path:
            return False, 16000
        with open(path) as f:
            pre = json.load(f)
        return bool(pre.get("do_normalize", False)), int(pre.get("sampling_rate", 16000))

    def _ensure_model(self) -> torch.nn.Module:
        if self.model is None:
            from transformers import AutoModel

            try:
                model, info = AutoModel.from_pretrained(
                    self.source,
                    local_files_only=self.local_only,
                    dtype=torch.float32,
                    output_loading_info=True,
                )
            except (OSError, ValueError, KeyError) as err:
                raise self._load_error(err) from err
            missing = sorted(
                k for k in info.get("missing_keys", ()) if "masked_spec_embed" not in k
            )
            if missing:
                warnings.warn(
                    f"{self.name}: {len(missing)} weights were not in the checkpoint and are "
                    "random "
                    f"(e.g. {missing[:3]}); the features will not be those of a trained model.",
                    stacklevel=3,
                )
            self.model = model.eval()
        return self.model

    def identity(self) -> dict[str, Any]:
        model = self._ensure_model()
        if self._weights_sha256 is None:
            h = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
            self._weights_sha256 = h.hexdigest()
        cfg = {
            k: v
            for k, v in self.config.to_dict().items()
            if not k.startswith("_") and k not in {"transformers_version", "dtype", "torch_dtype"}
        }
        return {
            "type": "hf",
            "config_sha256": _sha256_bytes(json.dumps(cfg, sort_keys=True, default=str).encode()),
            "weights_sha256": self._weights_sha256,
            "do_normalize": self.do_normalize,
            "attention_mask": self.use_attention_mask,
        }

    def frame_count(self, n_samples: int) -> int:
        return conv_frame_count(max(int(n_samples), self.min_samples), self.conv_layers)

    def load(self, device: torch.device) -> None:
        self.model = self._ensure_model().to(device)
        self.device = device

    def forward(
        self, waves: Sequence[np.ndarray], layers: Sequence[int]
    ) -> tuple[torch.Tensor, np.ndarray]:
        if self.model is None:
            raise RuntimeError("call load() before forward()")
        n = [len(w) for w in waves]
        x = np.zeros((len(waves), max(n)), dtype=np.float32)
        for i, w in enumerate(waves):
            if self.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
                w = (w - w.mean()) / np.sqrt(w.var() + 1e-7)
            x[i, : n[i]] = w
        inputs = {"input_values": torch.from_numpy(x).to(self.device)}
        if self.use_attention_mask:
            mask = np.arange(x.shape[1])[None, :] < np.asarray(n)[:, None]
            inputs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
        with torch.inference_mode():
            result = self.model(**inputs, output_hidden_states=True)
            # the last state is the model's output (after the final layer norm of pre-LN models,
            # which some transformers versions leave out of hidden_states[-1])
            hidden = [*result.hidden_states[:-1], result.last_hidden_state]
            out = torch.stack([hidden[i] for i in layers], dim=1)
        frames = np.array([self.frame_count(k) for k in n], dtype=np.int64)
        return out.float().cpu(), frames


def get_backbone(
    backbone: str, checkpoint: str | os.PathLike | None = None, sample_rate: int = 16000
) -> Backbone:
    """Build the backbone named by ``backbone`` (weights are loaded by ``.load(device)``).

    Raises:
        HcldError: unknown name, a checkpoint for a backbone that takes none, a sample rate
            the model was not trained on, a Hugging Face model that cannot be found.
    """
    if not isinstance(backbone, str):
        raise HcldError(f"backbone must be a string, got {backbone!r}")
    if backbone.startswith("hf:"):
        if checkpoint is not None:
            raise HcldError(
                "for hf: backbones give the model folder in the name: 'hf:/path/to/folder'"
            )
        return HFBackbone(backbone[3:], sample_rate=sample_rate)
    if backbone == "torchaudio:hubert_base":
        return TorchaudioHubertBackbone(checkpoint, sample_rate=sample_rate)
    if backbone == "fbank":
        if checkpoint is not None:
            raise HcldError("the fbank backbone has no weights: leave checkpoint=None")
        return FbankBackbone(sample_rate=sample_rate)
    raise HcldError(
        f"unknown backbone {backbone!r}: use 'fbank', 'torchaudio:hubert_base' or "
        "'hf:<model name or folder>'"
    )


def _resolve_layers(layer: str | int, num_layers: int, spec: str) -> tuple[int, ...]:
    if layer == "last":
        return (num_layers - 1,)
    if layer == "all":
        return tuple(range(num_layers))
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        idx = int(layer) + num_layers if layer < 0 else int(layer)
        if 0 <= idx < num_layers:
            return (idx,)
        raise HcldError(
            f"layer {layer} is out of range for {spec}, which has hidden states 0..{num_layers - 1}"
        )
    raise HcldError(f"layer must be 'last', 'all' or an int, got {layer!r}")


# --------------------------------------------------------------------------- table


def _prepare_table(table: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise HcldError(
            f"table must be a pandas DataFrame (one row per utterance), got {type(table).__name__}"
        )
    missing = [c for c in ("utterance_id", "path") if c not in table.columns]
    if missing:
        raise HcldError(
            f"the utterance table lacks the column(s) {missing}: build it with hcld_lib.data"
        )
    if len(table) == 0:
        raise HcldError("the utterance table is empty: nothing to extract")
    t = table.reset_index(drop=True).copy()
    for col in TABLE_COLUMNS:
        t[col] = t[col].fillna("").astype(str) if col in t.columns else ""
    t["path"] = [os.path.abspath(os.path.expanduser(p)) for p in t["path"]]
    dup = t["utterance_id"][t["utterance_id"].duplicated()].unique()
    if len(dup):
        raise HcldError(f"utterance_id must be unique; repeated: {list(dup[:5])}")
    rest = [c for c in t.columns if c not in TABLE_COLUMNS]
    return t[list(TABLE_COLUMNS) + rest]


def _table_csv(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def _read_table_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={c: str for c in TABLE_COLUMNS}, keep_default_na=False)


def _files_fingerprint(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as err:
            raise HcldError(
                f"audio file {p} does not exist or cannot be read ({err.strerror}): check the "
                "`path` column of the utterance table."
            ) from err
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- cache


class FeatureCache:
    """A complete feature cache, read-only (build it with :func:`extract_features`).

    Attributes:
        path: the cache folder.
        meta: the contents of meta.json (what made it).
        table: the utterance table that made it; row ``i`` of ``table`` is row ``i`` of ``array``.
        ids: utterance ids in row order.
        lengths: ``[N]`` int64, valid frames of each row.
        array: ``np.memmap`` float16, ``[N, T, D]`` (``[N, L, T, D]`` with ``layer="all"``),
            zero at frames ``t >= lengths[row]``.
        feature_dim: D. max_frames: T. n_layers: L (1 unless ``layer="all"``).
    """

    def __init__(
        self,
        path: Path,
        meta: dict,
        table: pd.DataFrame,
        lengths: np.ndarray,
        crc: np.ndarray,
        array: np.memmap,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.table = table
        self.ids: list[str] = table["utterance_id"].tolist()
        self.lengths = lengths
        self.crc = crc
        self.array = array
        self.feature_dim = int(array.shape[-1])
        self.max_frames = int(array.shape[-2])
        self.n_layers = int(array.shape[1]) if array.ndim == 4 else 1
        self._rows = {u: i for i, u in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, utt_id: str) -> int:
        """Row of ``utt_id`` in ``array`` (and ``table``)."""
        try:
            return self._rows[utt_id]
        except KeyError:
            raise KeyError(
                f"utterance {utt_id!r} is not in the feature cache {self.path}"
            ) from None

    def length(self, utt_id: str) -> int:
        """Valid frame count of ``utt_id``."""
        return int(self.lengths[self.row(utt_id)])

    def __getitem__(self, utt_id: str) -> np.ndarray:
        """Features of ``utt_id``: float32 ``[T, D]`` (``[L, T, D]`` for all layers), padded."""
        return np.asarray(self.array[self.row(utt_id)], dtype=np.float32)

    def verify(self) -> None:
        """Check every row against its stored CRC-32 (reads the whole array).

        Raises:
            HcldError: naming the first rows whose bytes changed.
        """
        bad = [
            i
            for i in range(len(self))
            if zlib.crc32(np.ascontiguousarray(self.array[i]).data) != self.crc[i]
        ]
        if bad:
            raise HcldError(
                f"feature cache {self.path} is corrupted: {len(bad)} rows fail their checksum "
                f"(e.g. {[self.ids[i] for i in bad[:3]]}). Delete the folder and re-run "
                "extract_features."
            )

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, backbone={self.meta.get('backbone')!r}, "
            f"shape={tuple(self.array.shape)})"
        )


def _corrupt(path: Path, what: str) -> HcldError:
    return HcldError(
        f"feature cache {path} is unusable: {what}. Delete the folder, or re-run extract_features "
        "with the same arguments (it resumes an incomplete cache and rebuilds a corrupted one)."
    )


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a .npy file, without reading the data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, f.tell()


def open_cache(path: str | os.PathLike, *, verify: bool = False) -> FeatureCache:
    """Open a complete feature cache folder (memory-mapped, read-only).

    Checks that the folder is complete (meta.json written last), that table.csv and index.csv
    match their recorded SHA-256, and that features.npy has the recorded shape, dtype and byte
    size. ``verify=True`` also checks every row's CRC-32 (reads the whole array).

    Raises:
        HcldError: saying what is wrong (incomplete, truncated, missing index, checksum
            mismatch) and to delete the folder or re-run :func:`extract_features`.
    """
    path = Path(path)
    if not path.is_dir():
        raise HcldError(f"feature cache {path} does not exist: build it with extract_features")
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        if (path / "progress.npz").exists() or (path / "features.npy").exists():
            raise _corrupt(
                path, "extraction did not finish (no meta.json): the cache is incomplete"
            )
        raise _corrupt(path, "no meta.json: this is not a feature cache folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise _corrupt(path, f"meta.json cannot be read ({err})") from err
    if (
        not isinstance(meta, dict)
        or meta.get("format") != CACHE_FORMAT
        or meta.get("complete") is not True
    ):
        raise _corrupt(path, "meta.json does not describe a complete feature cache")
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise _corrupt(
            path, f"cache format version {meta.get('format_version')} is not {CACHE_FORMAT_VERSION}"
        )
    for name, key in (("table.csv", "table_sha256"), ("index.csv", "index_sha256")):
        f = path / name
        if not f.is_file():
            raise _corrupt(path, f"{name} is missing")
        if _sha256_bytes(f.read_bytes()) != meta.get(key):
            raise _corrupt(
                path, f"{name} does not match its checksum in meta.json (it was modified)"
            )
    feat_path = path / "features.npy"
    if not feat_path.is_file():
        raise _corrupt(path, "features.npy is missing")
    try:
        shape, dtype, offset = _npy_header(feat_path)
    except Exception as err:
        raise _corrupt(path, f"features.npy has no valid header ({err})") from err
    expected_shape = tuple(meta.get("shape", ()))
    if shape != expected_shape or dtype != np.float16:
        raise _corrupt(
            path, f"features.npy is {dtype} {shape}, meta.json says float16 {expected_shape}"
        )
    expected_size = offset + int(np.prod(shape)) * 2
    actual_size = feat_path.stat().st_size
    if actual_size != expected_size:
        raise _corrupt(
            path, f"features.npy is {actual_size} bytes, expected {expected_size} (truncated?)"
        )
    table = _read_table_csv(path / "table.csv")
    index = pd.read_csv(path / "index.csv", dtype={"utterance_id": str}, keep_default_na=False)
    n = shape[0]
    if (
        list(index.columns) != ["utterance_id", "row", "length", "crc32"]
        or len(index) != n
        or len(table) != n
        or index["utterance_id"].tolist() != table["utterance_id"].tolist()
        or not np.array_equal(index["row"].to_numpy(), np.arange(n))
    ):
        raise _corrupt(path, "index.csv does not list the table's utterances in row order")
    lengths = index["length"].to_numpy(dtype=np.int64)
    if lengths.min() < 1 or lengths.max() > shape[-2]:
        raise _corrupt(path, f"index.csv has valid lengths outside 1..{shape[-2]}")
    array = np.load(feat_path, mmap_mode="r")
    cache = FeatureCache(path, meta, table, lengths, index["crc32"].to_numpy(dtype=np.int64), array)
    if verify:
        cache.verify()
    return cache


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "hcld" / "features"


def _fresh_state(folder: Path, shape: tuple[int, ...]) -> tuple[np.memmap, dict[str, np.ndarray]]:
    for name in ("features.npy", "progress.npz", "index.csv", "meta.json"):
        (folder / name).unlink(missing_ok=True)
    array = np.lib.format.open_memmap(
        folder / "features.npy", mode="w+", dtype=np.float16, shape=shape
    )
    n = shape[0]
    state = {
        "done": np.zeros(n, dtype=bool),
        "lengths": np.zeros(n, dtype=np.int64),
        "crc": np.zeros(n, dtype=np.int64),
    }
    atomic_save_npz(folder / "progress.npz", **state)
    return array, state


def _resume_state(
    folder: Path, shape: tuple[int, ...]
) -> tuple[np.memmap, dict[str, np.ndarray]] | None:
    """The arrays of an interrupted run, or None if they are absent or inconsistent."""
    feat, prog = folder / "features.npy", folder / "progress.npz"
    if not (feat.is_file() and prog.is_file()):
        return None
    try:
        got_shape, dtype, offset = _npy_header(feat)
        if got_shape != shape or dtype != np.float16:
            return None
        if feat.stat().st_size != offset + int(np.prod(shape)) * 2:
            return None
        with np.load(prog) as z:
            state = {k: np.array(z[k]) for k in ("done", "lengths", "crc")}
        if any(v.shape != (shape[0],) for v in state.values()):
            return None
        array = np.lib.format.open_memmap(feat, mode="r+")
    except Exception:
        return None
    return array, state


def extract_features(
    table: pd.DataFrame,
    backbone: str = "fbank",
    cache_dir: str | os.PathLike | None = None,
    *,
    max_seconds: float | None = 7.5,
    sample_rate: int = 16000,
    layer: str | int = "last",
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> FeatureCache:
    """Encode every utterance of ``table`` once with a frozen backbone and cache the features.

    Args:
        table: utterance table (``utterance_id``, ``path``, ``speaker``, ``emotion``, ...).
        backbone: ``"fbank"`` | ``"torchaudio:hubert_base"`` | ``"hf:<model name or folder>"``.
        cache_dir: parent folder; the cache is ``cache_dir/<backbone-slug>-<key[:12]>/``.
            None: ``$XDG_CACHE_HOME/hcld/features`` (``~/.cache/hcld/features``).
        max_seconds: each clip is trimmed or zero-padded to this length (7.5 s: T = 374);
            None keeps every clip whole (T = the longest clip's frames).
        sample_rate: audio is resampled to this rate (16000 for the SSL encoders).
        layer: ``"last"`` (the paper's), a hidden-state index (negative counts from the end), or
            ``"all"`` to keep every hidden state for a learnable weighted sum.
        checkpoint: for ``torchaudio:hubert_base``, a state-dict file (default: torch hub cache).
        batch_size: utterances per forward pass (batches group clips of similar length).
        device: None picks CUDA when present, else CPU.
        progress: show a tqdm bar (utterances/s, ETA).

    Returns:
        The complete :class:`FeatureCache`: ``array`` float16 ``[N, T, D]`` (``[N, L, T, D]`` for
        ``layer="all"``) and ``lengths`` ``[N]`` valid frames. An existing complete cache with the
        same key is returned without recomputation; an interrupted one is resumed (only the
        missing rows are computed); a corrupted one is rebuilt with a warning.

    Raises:
        HcldError: bad table, unreadable audio, unknown backbone, missing weights.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise HcldError(f"batch_size must be a positive int, got {batch_size!r}")
    table = _prepare_table(table)
    bb = get_backbone(backbone, checkpoint=checkpoint, sample_rate=sample_rate)
    layers = _resolve_layers(layer, bb.num_layers, bb.spec)
    max_seconds = None if max_seconds is None else float(max_seconds)
    if max_seconds is not None and not max_seconds > 0:
        raise HcldError(f"max_seconds must be positive or None, got {max_seconds!r}")

    table_text = _table_csv(table)
    paths = table["path"].tolist()
    key_parts = {
        "feature_code_version": FEATURE_CODE_VERSION,
        "backbone": bb.spec if not bb.spec.startswith("hf:") else "hf",
        "identity": bb.identity(),
        "layers": list(layers),
        "all_layers": layer == "all",
        "max_seconds": max_seconds,
        "sample_rate": bb.sample_rate,
        "table_sha256": _sha256_bytes(table_text.encode()),
        "files_sha256": _files_fingerprint(paths),
    }
    key = _sha256_bytes(json.dumps(key_parts, sort_keys=True).encode())
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    folder = root / f"{bb.slug}-{key[:12]}"

    if (folder / "meta.json").exists():
        try:
            return open_cache(folder)
        except HcldError as err:
            warnings.warn(f"{err} Rebuilding it.", stacklevel=2)
            shutil.rmtree(folder)

    start = time.time()
    n = len(table)
    n_samples = np.array(
        [audio_num_samples(p, bb.sample_rate, max_seconds) for p in paths], dtype=np.int64
    )
    if max_seconds is not None:
        max_frames = bb.frame_count(int(round(max_seconds * bb.sample_rate)))
    else:
        max_frames = max(bb.frame_count(int(k)) for k in n_samples)
    shape: tuple[int, ...] = (n, max_frames, bb.feature_dim)
    if layer == "all":
        shape = (n, len(layers), max_frames, bb.feature_dim)

    folder.mkdir(parents=True, exist_ok=True)
    table_path = folder / "table.csv"
    if not table_path.is_file() or table_path.read_text() != table_text:
        atomic_write_text(table_path, table_text)
    resumed = _resume_state(folder, shape)
    if resumed is None:
        if (folder / "progress.npz").exists() or (folder / "features.npy").exists():
            warnings.warn(
                f"feature cache {folder}: the interrupted run's files are unusable; starting over.",
                stacklevel=2,
            )
        array, state = _fresh_state(folder, shape)
    else:
        array, state = resumed
    todo = np.flatnonzero(~state["done"])
    dev = _auto_device(device)

    if len(todo):
        bb.load(dev)
        order = todo[
            np.argsort(-n_samples[todo], kind="stable")
        ]  # longest first: memory peaks early
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        _run_batches(bb, table, batches, array, state, folder, layers, max_seconds, progress, n)
    del array

    index = pd.DataFrame(
        {
            "utterance_id": table["utterance_id"],
            "row": np.arange(n),
            "length": state["lengths"],
            "crc32": state["crc"],
        }
    )
    index_text = _table_csv(index)
    atomic_write_text(folder / "index.csv", index_text)
    feat_path = folder / "features.npy"
    meta = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "complete": True,
        "key": key,
        "key_parts": key_parts,
        "backbone": bb.spec,
        "checkpoint": (
            str(bb.checkpoint_file()) if isinstance(bb, TorchaudioHubertBackbone) else None
        ),
        "layer": layer,
        "layers": list(layers),
        "n_layers": len(layers) if layer == "all" else 1,
        "max_seconds": max_seconds,
        "sample_rate": bb.sample_rate,
        "frame_rate_hz": 50.0,
        "shape": list(shape),
        "dtype": "float16",
        "feature_dim": bb.feature_dim,
        "max_frames": max_frames,
        "n_utterances": n,
        "features_bytes": feat_path.stat().st_size,
        "table_sha256": _sha256_bytes(table_text.encode()),
        "index_sha256": _sha256_bytes(index_text.encode()),
        "feature_code_version": FEATURE_CODE_VERSION,
        "versions": _versions(),
        "device": str(dev),
        "seconds_last_run": round(time.time() - start, 3),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(folder / "meta.json", meta)
    (folder / "progress.npz").unlink(missing_ok=True)
    return open_cache(folder)


def _versions() -> dict[str, str]:
    import numpy
    import torchaudio

    out = {
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "numpy": numpy.__version__,
    }
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    return out


def _load_batch(
    paths: Sequence[str], sample_rate: int, max_seconds: float | None, min_samples: int
) -> list[np.ndarray]:
    """Valid samples of each clip, zero-padded up to ``min_samples``."""
    waves = []
    for p in paths:
        w, valid = load_audio(p, sample_rate=sample_rate, max_seconds=max_seconds)
        w = w[:valid]
        if valid < min_samples:
            w = np.pad(w, (0, min_samples - valid))
        waves.append(np.ascontiguousarray(w, dtype=np.float32))
    return waves


def _run_batches(
    bb: Backbone,
    table: pd.DataFrame,
    batches: list[np.ndarray],
    array: np.memmap,
    state: dict[str, np.ndarray],
    folder: Path,
    layers: tuple[int, ...],
    max_seconds: float | None,
    progress: bool,
    n_total: int,
) -> None:
    """Encode the batches, writing rows then the done flags (in that order) after each batch."""
    from tqdm import tqdm

    paths = table["path"].to_numpy()
    max_frames = array.shape[-2]
    squeeze = array.ndim == 3
    bar = tqdm(
        total=n_total,
        initial=int(state["done"].sum()),
        unit="utt",
        desc=f"features {bb.spec}",
        disable=not progress,
        dynamic_ncols=True,
    )
    # read the next batch's audio while the current one is encoded
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:

        def submit(b: np.ndarray) -> concurrent.futures.Future:
            return pool.submit(
                _load_batch, paths[b].tolist(), bb.sample_rate, max_seconds, bb.min_samples
            )

        pending = submit(batches[0])
        try:
            for k, rows in enumerate(batches):
                waves = pending.result()
                if k + 1 < len(batches):
                    pending = submit(batches[k + 1])
                feats, frames = bb.forward(waves, layers)  # [B, L, T', D]
                if frames.max() > max_frames:
                    raise HcldError(
                        f"{paths[rows[int(frames.argmax())]]} gives {frames.max()} frames, "
                        "more than "
                        f"the cache's {max_frames}: the file changed during extraction; re-run."
                    )
                out = np.zeros(
                    (len(rows), feats.shape[1], max_frames, feats.shape[-1]), dtype=np.float16
                )
                for j, t in enumerate(frames):
                    x = feats[j, :, :t].numpy()
                    out[j, :, :t] = np.clip(x, -_FP16_MAX, _FP16_MAX)
                if squeeze:
                    out = out[:, 0]
                order = np.argsort(rows)
                rows_sorted = rows[order]
                array[rows_sorted] = out[order]
                array.flush()
                state["done"][rows] = True
                state["lengths"][rows] = frames
                state["crc"][rows] = [zlib.crc32(out[j].data) for j in range(len(rows))]
                atomic_save_npz(folder / "progress.npz", **state)
                bar.update(len(rows))
        finally:
            pending.cancel()
            bar.close()


# --------------------------------------------------------------------------- normalisation


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
