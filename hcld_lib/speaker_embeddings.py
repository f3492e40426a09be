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

(b) **Our own speaker branch X_s** of a trained variant: :func:`load_branch_embeddings` reads a
run's ``embeddings.npz`` (keys ``x_s``, ``emotion``, ``speaker``, ``utterance_id``; the fold's test
part) and :func:`find_runs` lists the runs of a work folder by variant, architecture and protocol.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.io import HcldError, atomic_dir

SAMPLE_RATE = 16000
ECAPA_SOURCE = "speechbrain/spkrec-ecapa-voxceleb"
COMPLETE_MARKER = "COMPLETE"


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------
def _import_resemblyzer() -> Any:
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
        import torch

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
        savedir: where SpeechBrain keeps its copy of a named model.
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
        if not is_local and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise HcldError(
                f"{source!r} is not a local folder and HF_HUB_OFFLINE=1 forbids a download. {where}"
            )
        try:
            self.model = EncoderClassifier.from_hparams(
                source=str(local) if is_local else source,
                savedir=savedir or str(Path("models") / source.replace("/", "--")),
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
        import torch

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
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
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
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]


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
    emb = np.load(folder / "embeddings.npy")
    ids = (folder / "ids.txt").read_text().splitlines()
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
    from hcld_lib.audio import load_audio

    if len(table) == 0:
        raise HcldError("the utterance table is empty; nothing to embed")
    enc = load_speaker_encoder(encoder, device=device)
    key = _table_key(table, enc.identity)
    folder = Path(cache_dir) / f"spk-{_slug(enc.name)}-{key}"
    ids = table["utterance_id"].astype(str).tolist()
    if folder.exists():
        emb, cached_ids = _read_cache(folder)
        if cached_ids != ids:
            raise HcldError(f"speaker-embedding cache {folder} does not match the table; delete it")
        return emb, ids

    paths = table["path"].astype(str).tolist()
    out = np.zeros((len(table), enc.dim), dtype=np.float32)
    starts = range(0, len(table), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"speaker embeddings ({enc.name})", unit="batch")
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


# --------------------------------------------------------------------------------------------
# (b) our own speaker branch
# --------------------------------------------------------------------------------------------
@dataclass
class BranchEmbeddings:
    """The test-part embeddings a training run saved (``embeddings.npz``)."""

    x_s: np.ndarray | None
    """[N, E] speaker-branch embeddings, ``None`` for a run without a speaker branch (EMO-only)."""
    x_e: np.ndarray | None
    """[N, E] emotion-branch embeddings."""
    emotion: np.ndarray
    speaker: np.ndarray
    utterance_id: np.ndarray
    run_dir: Path
    config: dict


def load_branch_embeddings(run: str | os.PathLike, require_x_s: bool = True) -> BranchEmbeddings:
    """Read a run's ``embeddings.npz`` (a run folder or the file itself).

    Raises an :class:`HcldError` when the file is missing, or when ``require_x_s`` and the run has
    no speaker branch (EMO-only saves no ``x_s``).
    """
    from hcld_lib.decoupling import load_embeddings

    path = Path(run)
    if path.is_dir():
        path = path / "embeddings.npz"
    arrays = load_embeddings(path)  # checks the file and the x_e / emotion / speaker arrays
    if "utterance_id" not in arrays:
        raise HcldError(
            f"{path} has no 'utterance_id' array (has {sorted(arrays)}); re-run the training"
        )
    if require_x_s and "x_s" not in arrays:
        raise HcldError(
            f"{path} has no x_s: the run has no speaker branch (EMO-only); "
            "choose a variant with one"
        )
    config: dict = {}
    metrics = path.parent / "metrics.json"
    if metrics.is_file():
        config = json.loads(metrics.read_text()).get("config", {})
    return BranchEmbeddings(
        x_s=arrays.get("x_s"),
        x_e=arrays.get("x_e"),
        emotion=arrays["emotion"].astype(str),
        speaker=arrays["speaker"].astype(str),
        utterance_id=arrays["utterance_id"].astype(str),
        run_dir=path.parent,
        config=config,
    )


def find_runs(
    runs_dir: str | os.PathLike,
    *,
    variants: Sequence[str] | None = None,
    emotion_arch: str | None = None,
    protocol: str | None = None,
    train_fraction: float | None = 1.0,
    features: str | None = None,
    require_x_s: bool = True,
) -> pd.DataFrame:
    """Finished runs (``metrics.json`` + ``embeddings.npz``) under ``runs_dir``, filtered.

    Returns a DataFrame with ``run_dir, variant, emotion_arch, protocol, fold, seed,
    train_fraction, pretrained`` (pretrained = the run started from a pretrained emotion encoder),
    sorted by variant and fold. Runs started from a pretrained encoder are included; filter on
    ``pretrained`` to drop them.
    """
    rows = []
    for metrics in sorted(Path(runs_dir).glob("*/metrics.json")):
        run_dir = metrics.parent
        if not (run_dir / "embeddings.npz").is_file():
            continue
        try:
            cfg = json.loads(metrics.read_text()).get("config", {})
        except json.JSONDecodeError:
            continue
        if require_x_s and not cfg.get("speaker_branch", True):
            continue
        row = {
            "run_dir": str(run_dir),
            "variant": cfg.get("variant"),
            "emotion_arch": cfg.get("emotion_arch"),
            "protocol": cfg.get("protocol"),
            "fold": cfg.get("fold"),
            "seed": cfg.get("seed"),
            "train_fraction": cfg.get("train_fraction", 1.0),
            "pretrained": bool(cfg.get("init_emotion_encoder")),
            "features": cfg.get("features"),
        }
        if variants is not None and row["variant"] not in variants:
            continue
        if emotion_arch is not None and row["emotion_arch"] != emotion_arch:
            continue
        if protocol is not None and row["protocol"] != protocol:
            continue
        if train_fraction is not None and row["train_fraction"] != train_fraction:
            continue
        if features is not None and row["features"] is not None and (
            Path(row["features"]).resolve() != Path(features).resolve()
        ):
            continue
        rows.append(row)
    cols = ["run_dir", "variant", "emotion_arch", "protocol", "fold", "seed", "train_fraction",
            "pretrained", "features"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["variant", "fold", "seed"], kind="stable").reset_index(drop=True)


def speaker_space_sets(
    runs: pd.DataFrame,
    table: pd.DataFrame,
    embeddings: np.ndarray | None = None,
    ids: Sequence[str] | None = None,
    encoder_name: str = "resemblyzer",
) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Evaluation sets of every speaker space, on the same utterances, for the clustering analysis.

    Args:
        runs: finished runs (:func:`find_runs`); each gives its test part's X_s.
        table: the utterance table (speaker and emotion of the pretrained encoder's rows).
        embeddings, ids: a pretrained speaker encoder's ``[M, D]`` embeddings and their ids
            (:func:`speaker_embeddings`); ``None`` leaves that source out.
        encoder_name: the name of that source.

    Returns:
        ``{source: [(x [n, D], speaker [n], emotion [n]), ...]}`` with sources ``encoder_name``
        (restricted to each fold's test utterances, so it is scored on exactly the utterances the
        X_s are; all utterances when there is no run) and ``"X_s:<variant>"`` (one set per fold).
    """
    sources: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    loaded = {r: load_branch_embeddings(r) for r in runs["run_dir"]} if len(runs) else {}
    if embeddings is not None:
        if ids is None or len(ids) != len(embeddings):
            raise HcldError("speaker_space_sets: pass one id per embedding row")
        where = {str(u): i for i, u in enumerate(ids)}
        by_id = table.set_index(table["utterance_id"].astype(str))
        sets = []
        if loaded:
            seen: set[int] = set()
            for _, run in runs.iterrows():
                if int(run["fold"]) in seen:
                    continue
                seen.add(int(run["fold"]))
                utt = loaded[run["run_dir"]].utterance_id
                sets.append(list(utt))
        else:
            sets.append(list(table["utterance_id"].astype(str)))
        out = []
        for utt in sets:
            missing = [u for u in utt if u not in where]
            if missing:
                raise HcldError(
                    f"{len(missing)} utterances (e.g. {missing[:3]}) have no {encoder_name} "
                    "embedding; embed the table the runs were trained on"
                )
            rows = by_id.loc[utt]
            out.append((np.asarray(embeddings)[[where[u] for u in utt]],
                        rows["speaker"].astype(str).to_numpy(),
                        rows["emotion"].astype(str).to_numpy()))
        sources[encoder_name] = out
    for _, run in runs.iterrows():
        b = loaded[run["run_dir"]]
        sources.setdefault(f"X_s:{run['variant']}", []).append((b.x_s, b.speaker, b.emotion))
    if not sources:
        raise HcldError("no speaker space to analyse: no finished run and no encoder embeddings")
    return sources
