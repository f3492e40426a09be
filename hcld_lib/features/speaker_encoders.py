"""Speaker embeddings for the §6 analysis: a pretrained speaker encoder, or our own speaker branch.

(a) **A pretrained speaker encoder** ("upstream", frozen), cached like the features:

- ``"resemblyzer"`` (offline, the default): the GE2E d-vector encoder of the PyPI package
  ``resemblyzer`` (Wan et al. 2018; a 3-layer LSTM over 40-band mel frames, 256-d, unit-norm
  output). Its weights (``pretrained.pt``, 17 MB) ship inside the package, so nothing is downloaded.
  The package pulls in ``librosa`` (mel spectrogram, and through it numba) and ``webrtcvad`` (the
  voice-activity detector of its ``preprocess_wav``). We follow its documented pipeline:
  ``preprocess_wav`` (volume normalised to -30 dBFS, increase only; silences longer than ~0.2 s
  trimmed) then the utterance embedding of ``VoiceEncoder.embed_utterance``: 1.6 s partial windows
  at 1.3 per second, one embedding each, averaged and L2-normalised. We batch the partial windows
  of many utterances through the network at once (the package runs one utterance at a time); the
  result equals ``embed_utterance`` to float precision (tested) and is several times faster on a
  CPU (1000 synthetic utterances of 1.5-4 s: ~15 s on 2 cores).
- ``"ecapa"`` or ``"speechbrain:<name or folder>"`` (online, or a local copy): SpeechBrain's
  ECAPA-TDNN (``speechbrain/spkrec-ecapa-voxceleb``, 192-d). Needs ``pip install speechbrain``;
  offline, put the model folder (``hyperparams.yaml``, ``embedding_model.ckpt``,
  ``mean_var_norm_emb.ckpt``, ``classifier.ckpt``, ``label_encoder.txt``) somewhere, e.g.
  ``models/spkrec-ecapa-voxceleb``, and pass ``encoder="speechbrain:models/spkrec-ecapa-voxceleb"``.

(b) **Our own speaker branch X_s** of a trained variant is read from its run folder by
:mod:`hcld_lib.analysis.embeddings`.

Cache layout (as the feature cache: one folder per key, built under a temporary name and renamed
when complete, so a crash never leaves a half-written cache)::

    <cache_dir>/spk-<encoder slug>-<key>/
        embeddings.npy   float32 [N, D]
        ids.txt          one utterance_id per line, row order of embeddings.npy
        meta.json        encoder identity, dimension, key, settings
        COMPLETE         written last
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hcld_lib import runtime
from hcld_lib.data.audio import load_audio
from hcld_lib.io import HcldError, atomic_dir, load_npy, slug

SAMPLE_RATE = 16000
ECAPA_SOURCE = "speechbrain/spkrec-ecapa-voxceleb"
COMPLETE_MARKER = "COMPLETE"


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------
def _import_resemblyzer() -> Any:
    runtime.numba_cache()  # librosa compiles with numba on import
    try:
        with warnings.catch_warnings():
            # resemblyzer 0.1.4 imports binary_dilation from a deprecated scipy namespace
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise HcldError(
            "the speaker encoder 'resemblyzer' needs the PyPI package resemblyzer "
            "(pip install resemblyzer; it ships its own weights and pulls in librosa and "
            "webrtcvad): "
            f"{err}"
        ) from err
    return resemblyzer


class ResemblyzerEncoder:
    """The GE2E speaker encoder of the ``resemblyzer`` package (weights ship in the package).

    Args:
        device: torch device string (``"cpu"`` by default).
        preprocess: apply ``resemblyzer.preprocess_wav`` (volume normalisation, silence trimming)
            before embedding, as the package documents.
        batch_partials: partial windows per forward pass.
    """

    dim = 256
    sample_rate = SAMPLE_RATE

    def __init__(self, device: str = "cpu", preprocess: bool = True, batch_partials: int = 256):
        rz = _import_resemblyzer()
        self._rz = rz
        self.model = rz.VoiceEncoder(device=device, verbose=False)
        self.model.eval()
        self.preprocess = preprocess
        self.batch_partials = int(batch_partials)
        weights = Path(rz.__file__).resolve().parent / "pretrained.pt"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        version = importlib.metadata.version("resemblyzer")
        self.identity = f"resemblyzer-{version}-{digest}-pre{int(preprocess)}"
        self.name = "resemblyzer"

    def prepare(self, wav: np.ndarray) -> np.ndarray:
        """The waveform the network sees: preprocessed as the package does (when enabled)."""
        wav = np.asarray(wav, dtype=np.float32)
        if self.preprocess:
            if not np.any(wav):
                return wav
            trimmed = self._rz.preprocess_wav(wav)
            # the voice-activity detector may drop everything from a very short or quiet clip
            if len(trimmed) >= SAMPLE_RATE // 10:
                return trimmed.astype(np.float32)
            return self._rz.normalize_volume(wav, -30, increase_only=True).astype(np.float32)
        return wav

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Utterance embeddings [B, 256] (unit norm) of 16 kHz waveforms (each [T_i] float32)."""
        mels, owner = [], []
        for i, wav in enumerate(wavs):
            wav = self.prepare(wav)
            wav_slices, mel_slices = self.model.compute_partial_slices(
                len(wav), rate=1.3, min_coverage=0.75
            )
            stop = wav_slices[-1].stop
            if stop >= len(wav):
                wav = np.pad(wav, (0, stop - len(wav)), "constant")
            mel = self._rz.wav_to_mel_spectrogram(wav)
            for s in mel_slices:
                mels.append(mel[s])
                owner.append(i)
        partial = np.zeros((len(mels), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(mels), self.batch_partials):
                chunk = torch.from_numpy(np.stack(mels[start : start + self.batch_partials]))
                partial[start : start + len(chunk)] = self.model(chunk.to(self.model.device)).cpu()
        owner_arr = np.asarray(owner)
        out = np.zeros((len(wavs), self.dim), dtype=np.float32)
        np.add.at(out, owner_arr, partial)
        out /= np.bincount(owner_arr, minlength=len(wavs))[:, None]
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norm, 1e-12)).astype(np.float32)


class SpeechBrainEncoder:
    """SpeechBrain's ECAPA-TDNN speaker encoder (or any SpeechBrain ``EncoderClassifier``).

    Args:
        source: a Hugging Face model name (downloaded when online) or a local model folder.
        device: torch device string.
        savedir: where SpeechBrain keeps its copy of a named model (default
            ``<cache_home>/speechbrain/<owner>--<name>``, :func:`hcld_lib.runtime.cache_home`).
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, source: str = ECAPA_SOURCE, device: str = "cpu", savedir: str | None = None):
        where = (
            "Offline, download the model folder on a machine with internet "
            f"(huggingface-cli download {ECAPA_SOURCE} --local-dir models/spkrec-ecapa-voxceleb; "
            "it holds hyperparams.yaml, embedding_model.ckpt, mean_var_norm_emb.ckpt, "
            "classifier.ckpt, label_encoder.txt), copy it to models/spkrec-ecapa-voxceleb and pass "
            "encoder='speechbrain:models/spkrec-ecapa-voxceleb'."
        )
        try:
            try:
                from speechbrain.inference.speaker import EncoderClassifier
            except ImportError:
                from speechbrain.pretrained import EncoderClassifier  # speechbrain < 1.0
        except ImportError as err:
            raise HcldError(
                f"the speaker encoder {source!r} (SpeechBrain ECAPA-TDNN) needs the package "
                f"speechbrain, which is not installed: pip install speechbrain. {where}"
            ) from err
        local = Path(source).expanduser()
        is_local = local.is_dir()
        if not is_local and not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            raise HcldError(f"speaker-encoder folder {source} does not exist. {where}")
        if is_local and not (local / "hyperparams.yaml").is_file():
            raise HcldError(
                f"{local} has no hyperparams.yaml: not a SpeechBrain model folder. {where}"
            )
        if not is_local and runtime.offline():
            raise HcldError(
                f"{source!r} is not a local folder and downloads are off (one of "
                f"{', '.join(runtime.OFFLINE_VARIABLES)} is set, e.g. HF_HUB_OFFLINE=1). {where}"
            )
        try:
            self.model = EncoderClassifier.from_hparams(
                source=str(local) if is_local else source,
                savedir=savedir or str(runtime.cache_home() / "speechbrain"
                                       / source.replace("/", "--")),
                run_opts={"device": device},
            )
        except Exception as err:  # noqa: BLE001 - any load failure gets the same advice
            raise HcldError(
                f"could not load the SpeechBrain model {source!r}: {err}. {where}"
            ) from err
        self.model.eval()
        self.device = device
        self.name = "ecapa" if source == ECAPA_SOURCE else f"speechbrain:{source}"
        try:
            version = importlib.metadata.version("speechbrain")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            version = "?"
        self.identity = f"speechbrain-{version}-{source}"
        self.dim = int(self.embed([np.zeros(SAMPLE_RATE, dtype=np.float32)]).shape[1])

    def embed(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Utterance embeddings [B, D] (D = 192 for ECAPA) of 16 kHz waveforms."""
        lengths = np.array([len(w) for w in wavs])
        batch = np.zeros((len(wavs), int(lengths.max())), dtype=np.float32)
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = w
        with torch.no_grad():
            emb = self.model.encode_batch(
                torch.from_numpy(batch).to(self.device),
                torch.from_numpy(lengths / lengths.max()).float().to(self.device),
            )
        return emb.reshape(len(wavs), -1).cpu().numpy().astype(np.float32)


def load_speaker_encoder(encoder: str = "resemblyzer", device: str = "cpu") -> Any:
    """A speaker encoder by name: ``"resemblyzer"``, ``"ecapa"`` or ``"speechbrain:<name|folder>"``.

    The returned object has ``name``, ``identity`` (goes into the cache key), ``dim``,
    ``sample_rate`` and ``embed(wavs) -> np.ndarray [B, dim]``. ``device="auto"`` picks CUDA
    when available, else the CPU.
    """
    device = str(runtime.resolve_device(device))
    if encoder == "resemblyzer":
        return ResemblyzerEncoder(device=device)
    if encoder == "ecapa":
        return SpeechBrainEncoder(ECAPA_SOURCE, device=device)
    if encoder.startswith("speechbrain:"):
        return SpeechBrainEncoder(encoder.split(":", 1)[1], device=device)
    raise HcldError(
        f"unknown speaker encoder {encoder!r}; use 'resemblyzer' (offline), 'ecapa' or "
        "'speechbrain:<model name or local folder>'"
    )


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def _table_key(table: pd.DataFrame, identity: str) -> str:
    for col in ("utterance_id", "path"):
        if col not in table.columns:
            raise HcldError(
                f"the utterance table has no {col!r} column (columns: {list(table.columns)})"
            )
    h = hashlib.sha256(identity.encode())
    for uid, path in zip(table["utterance_id"].astype(str), table["path"].astype(str)):
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        h.update(f"{uid}\t{path}\t{size}\n".encode())
    return h.hexdigest()[:16]


def _read_cache(folder: Path) -> tuple[np.ndarray, list[str]]:
    if not (folder / COMPLETE_MARKER).is_file():
        raise HcldError(f"speaker-embedding cache {folder} is incomplete; delete it to rebuild")
    remedy = f"delete the folder {folder} to rebuild it"
    emb = load_npy(folder / "embeddings.npy", what="speaker-embedding cache file", remedy=remedy)
    try:
        ids = (folder / "ids.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise HcldError(f"speaker-embedding cache file {folder / 'ids.txt'} cannot be read "
                        f"({err}): {remedy}") from err
    if len(ids) != len(emb):
        raise HcldError(f"speaker-embedding cache {folder} is corrupt (ids vs rows); delete it")
    return emb, ids


def speaker_embeddings(
    table: pd.DataFrame,
    encoder: str = "resemblyzer",
    cache_dir: str | os.PathLike = "runs/cache",
    *,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Embed every utterance of ``table`` with a pretrained speaker encoder, through a cache.

    Args:
        table: the utterance table (``utterance_id``, ``path`` at least).
        encoder: ``"resemblyzer"`` (offline default), ``"ecapa"`` or
            ``"speechbrain:<name|folder>"``.
        cache_dir: parent folder of the cache (one sub-folder per table + encoder identity).
        device: torch device of the encoder (``"auto"``: CUDA when available, else CPU).
        batch_size: utterances per batch.
        progress: show a progress bar.

    Returns:
        ``(embeddings [N, D] float32, utterance_ids [N])`` in the row order of ``table``
        (D = 256 for resemblyzer, unit norm; 192 for ECAPA).
    """
    if len(table) == 0:
        raise HcldError("the utterance table is empty; nothing to embed")
    enc = load_speaker_encoder(encoder, device=device)
    key = _table_key(table, enc.identity)
    folder = Path(cache_dir) / f"spk-{slug(enc.name)[:60]}-{key}"
    ids = table["utterance_id"].astype(str).tolist()
    if folder.exists():
        emb, cached_ids = _read_cache(folder)
        if cached_ids != ids:
            raise HcldError(f"speaker-embedding cache {folder} does not match the table; delete it")
        return emb, ids

    paths = table["path"].astype(str).tolist()
    out = np.zeros((len(table), enc.dim), dtype=np.float32)
    starts = runtime.progress(range(0, len(table), batch_size), enabled=progress,
                              desc=f"speaker embeddings ({enc.name})", unit="batch")
    for start in starts:
        wavs = []
        for p in paths[start : start + batch_size]:
            wav, valid = load_audio(p, enc.sample_rate, max_seconds=None)
            if valid == 0 or not np.any(wav[:valid]):
                raise HcldError(f"{p} is silent or empty; a speaker embedding needs speech")
            wavs.append(wav[:valid])
        out[start : start + len(wavs)] = enc.embed(wavs)
    if not np.all(np.isfinite(out)):
        bad = [ids[i] for i in np.flatnonzero(~np.all(np.isfinite(out), axis=1))[:5]]
        raise HcldError(f"the speaker encoder {enc.name} gave non-finite embeddings for {bad}")

    with atomic_dir(folder) as tmp:
        np.save(tmp / "embeddings.npy", out)
        (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
        meta = {"encoder": enc.name, "identity": enc.identity, "dim": enc.dim, "key": key,
                "n": len(ids), "sample_rate": enc.sample_rate}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / COMPLETE_MARKER).write_text("ok\n")
    return out, ids
