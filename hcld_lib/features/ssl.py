"""Self-supervised speech encoders: torchaudio's HuBERT-base (the paper's) and Hugging Face's.

- ``"torchaudio:hubert_base"``: torchaudio's ``HUBERT_BASE`` (HuBERT-base, LibriSpeech 960 h),
  D = 768, 13 hidden states (0 = transformer input, 12 = last layer). The weights come from an
  explicit ``checkpoint`` path or from the torch hub cache,
  ``$TORCH_HOME/hub/checkpoints/hubert_fairseq_base_ls960.pth``; when that file is absent they
  are downloaded there on first use with torch.hub (the mechanism of torchaudio's
  ``HUBERT_BASE.get_model()``, with its progress bar), unless offline
  (:func:`hcld_lib.runtime.offline`), where the error names the path and the URL.
- ``"hf:<model name or folder>"``: any Hugging Face speech encoder that ``AutoModel`` loads
  (HuBERT, WavLM, wav2vec 2.0, data2vec-audio), ``num_hidden_layers + 1`` hidden states; a hub
  name downloads into the Hugging Face cache on first use, unless offline.

Padding. Each utterance is cut to its valid samples before the encoder. For ``torchaudio``
the convolutional front end runs on each utterance's own samples (its GroupNorm would otherwise
average over padding) and the transformer gets the frame lengths as an attention mask, so a
clip's features do not depend on its batch-mates. Hugging Face models get an ``attention_mask``
when their front end uses layer norm (``feat_extract_norm == "layer"``); otherwise they are
zero-padded without a mask, as those checkpoints expect (a small dependence on batch-mates
remains, kept small by batching utterances of similar length).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hcld_lib import runtime
from hcld_lib.features.backbone import (
    HUBERT_CONV_LAYERS,
    Backbone,
    conv_frame_count,
    min_samples,
    pad_stack,
    sha256_file,
)
from hcld_lib.features.hfsource import HFSource
from hcld_lib.io import HcldError


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
    :func:`hubert_checkpoint_path` (downloaded there on first use unless ``offline``). Hidden
    state 0 is the transformer input (projected convolutional features + positional convolution,
    layer-normed), state ``i`` the output of transformer layer ``i``, matching Hugging Face's
    ``hidden_states``.
    """

    def __init__(
        self, checkpoint: str | os.PathLike | None = None, sample_rate: int = 16000,
        offline: bool | None = None,
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
        self.min_samples = min_samples(HUBERT_CONV_LAYERS)
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint is not None else None
        self.offline = offline
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    def checkpoint_file(self) -> Path:
        """The checkpoint that will be loaded, downloaded into the torch hub cache on first use.

        An explicit ``checkpoint`` must exist. Without one, an absent
        :func:`hubert_checkpoint_path` is downloaded from :func:`hubert_checkpoint_url` with
        ``torch.hub.download_url_to_file`` (progress bar; the file appears only when complete),
        unless offline; offline or unreachable, the error names the path to put the file at.
        """
        if self.checkpoint is not None:
            if not self.checkpoint.is_file():
                raise HcldError(
                    f"torchaudio:hubert_base: the checkpoint given, {self.checkpoint}, does not "
                    f"exist; pass the path of {hubert_checkpoint_path().name} or leave checkpoint "
                    "unset to use (and fill) the torch hub cache"
                )
            return self.checkpoint
        path = hubert_checkpoint_path()
        if path.is_file():
            return path
        url = hubert_checkpoint_url()
        advice = (
            f"Put the file at {path} (the torch hub cache; TORCH_HOME moves it) or pass "
            f"checkpoint='/path/to/{path.name}'; on a machine with internet it downloads by itself "
            f"on first use, or fetch it from {url} (e.g. `curl -L -o {path.name} {url}`)."
        )
        if runtime.offline(self.offline):
            raise HcldError(
                f"torchaudio:hubert_base: no HuBERT-base checkpoint at {path}, and downloads are "
                f"off (offline=True or one of {', '.join(runtime.OFFLINE_VARIABLES)} is set). "
                + advice
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except (OSError, ValueError) as err:  # URLError is an OSError
            raise HcldError(
                f"torchaudio:hubert_base: no checkpoint at {path} and the download from {url} "
                f"failed ({type(err).__name__}: {err}). {advice}"
            ) from err
        return path

    def identity(self) -> dict[str, Any]:
        path = self.checkpoint_file()
        return {"type": "torchaudio_hubert_base", "checkpoint_sha256": sha256_file(path)}

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
            x = pad_stack(conv)  # [B, T, 512]
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



class HFBackbone(Backbone):
    """A Hugging Face speech encoder loaded with ``AutoModel`` from a name or a local folder.

    The model is found by :class:`~hcld_lib.features.hfsource.HFSource` (``local_files_only``
    for folders and whenever ``HF_HUB_OFFLINE`` / ``HCLD_OFFLINE`` is set, so nothing is fetched
    silently). If the model's preprocessor config asks for it (``do_normalize``), each waveform is
    normalised to zero mean and unit variance over its valid samples. Hidden states
    ``0..num_hidden_layers`` (0 = transformer input); the last one is ``last_hidden_state``, the
    model's output.
    """

    def __init__(self, name: str, sample_rate: int = 16000, offline: bool | None = None,
                 src: HFSource | None = None) -> None:
        self.src = src or HFSource(name, offline, example="facebook/hubert-base-ls960")
        self.spec = f"hf:{name}"
        self.name, self.source, self.local_only = name, self.src.source, self.src.local_only
        self.config = cfg = self.src.config
        if not hasattr(cfg, "conv_kernel") or not hasattr(cfg, "num_hidden_layers"):
            raise HcldError(
                f"{name} is a {type(cfg).__name__}, not a speech encoder with a "
                "convolutional front end (HuBERT, WavLM, wav2vec 2.0, data2vec-audio) nor a "
                "Whisper model: choose one of those."
            )
        self.conv_layers = tuple(zip(cfg.conv_kernel, cfg.conv_stride))
        self.num_layers = int(cfg.num_hidden_layers) + 1
        self.feature_dim = int(cfg.hidden_size)
        self.min_samples = min_samples(self.conv_layers)
        self.use_attention_mask = getattr(cfg, "feat_extract_norm", "group") == "layer"
        pre = self.src.preprocessor()
        self.do_normalize = bool(pre.get("do_normalize", False))
        model_rate = int(pre.get("sampling_rate", 16000))
        if int(sample_rate) != model_rate:
            raise HcldError(
                f"{name} expects {model_rate} Hz audio, got sample_rate={sample_rate}: use "
                f"sample_rate={model_rate} (audio is resampled on loading)."
            )
        self.sample_rate = model_rate
        self.model: torch.nn.Module | None = None
        self.device = torch.device("cpu")

    @property
    def cache_name(self) -> str:
        return "hf"  # a hub name and a folder of the same files share a key (identity: hashes)

    def identity(self) -> dict[str, Any]:
        """Config and weight-file hashes: what decides the features, read without loading the
        model (the file hashes are remembered across processes, see ``sha256_file``)."""
        return {
            "type": "hf",
            **self.src.identity(),
            "do_normalize": self.do_normalize,
            "attention_mask": self.use_attention_mask,
        }

    def frame_count(self, n_samples: int) -> int:
        return conv_frame_count(max(int(n_samples), self.min_samples), self.conv_layers)

    def load(self, device: torch.device) -> None:
        if self.model is None:
            from transformers import AutoModel

            self.model = self.src.from_pretrained(AutoModel, ignore=("masked_spec_embed",))
        self.model = self.model.to(device)
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
