"""Feature extraction: every utterance of a table through a frozen backbone, once, into a cache.

Backbones (the ``backbone`` of :func:`extract_features`): ``"fbank"``
(:mod:`~hcld_lib.features.fbank`, the embedded default), ``"torchaudio:hubert_base"`` and
``"hf:<model name or folder>"`` (:mod:`~hcld_lib.features.ssl`), the Whisper encoders
(``"whisper-tiny.en"``, ``"hf:openai/whisper-*"``, ``"whisper:<folder>"``, ``"ct2:<folder>"``;
:mod:`~hcld_lib.features.whisper`), and backbones of your own (a :class:`Backbone` instance or a
name plugged in, :mod:`~hcld_lib.features.registry`). The cache format is that of
:mod:`~hcld_lib.features.cache`; an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hcld_lib.data.audio import audio_num_samples, load_audio
from hcld_lib.features.backbone import Backbone, sha256_bytes
from hcld_lib.features.cache import (
    CACHE_FORMAT,
    CACHE_FORMAT_VERSION,
    FEATURE_CODE_VERSION,
    FeatureCache,
    files_fingerprint,
    npy_header,
    open_cache,
    prepare_table,
    table_csv,
)
from hcld_lib.features.registry import get_backbone, is_builtin
from hcld_lib.features.ssl import TorchaudioHubertBackbone
from hcld_lib.io import (
    HcldError,
    atomic_save_npz,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    load_npz,
)
from hcld_lib.runtime import progress as progress_bar
from hcld_lib.runtime import resolve_device, torch_threads

_FP16_MAX = float(np.finfo(np.float16).max)

def _resolve_layers(
    layer: str | int, num_layers: int, spec: str,
    exposed: tuple[int, ...] | None = None, note: str = "",
) -> tuple[int, ...]:
    if layer == "last":
        layers: tuple[int, ...] = (num_layers - 1,)
    elif layer == "all":
        layers = tuple(range(num_layers))
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        idx = int(layer) + num_layers if layer < 0 else int(layer)
        if not 0 <= idx < num_layers:
            raise HcldError(
                f"layer {layer} is out of range for {spec}, which has hidden states "
                f"0..{num_layers - 1}"
            )
        layers = (idx,)
    else:
        raise HcldError(f"layer must be 'last', 'all' or an int, got {layer!r}")
    if exposed is not None and not set(layers) <= set(exposed):
        raise HcldError(
            f"layer={layer!r}: {spec} gives only hidden state(s) {list(exposed)} of "
            f"0..{num_layers - 1}" + (f" ({note})" if note else "")
        )
    return layers


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
        got_shape, dtype, offset = npy_header(feat)
        if got_shape != shape or dtype != np.float16:
            return None
        if feat.stat().st_size != offset + int(np.prod(shape)) * 2:
            return None
        state = load_npz(prog, what="extraction progress", keys=("done", "lengths", "crc"))
        if any(v.shape != (shape[0],) for v in state.values()):
            return None
        array = np.lib.format.open_memmap(feat, mode="r+")
    except Exception:
        return None
    return array, state


def _cache_key(
    bb: Backbone,
    layers: tuple[int, ...],
    layer: str | int,
    max_seconds: float | None,
    table_text: str,
    paths: list[str],
) -> tuple[str, dict]:
    """The cache key (sha256 of the sorted-JSON ``key_parts``) and the ``key_parts`` dict."""
    key_parts = {
        "feature_code_version": FEATURE_CODE_VERSION,
        "backbone": bb.cache_name,
        "identity": bb.identity(),
        "layers": list(layers),
        "all_layers": layer == "all",
        "max_seconds": max_seconds,
        "sample_rate": bb.sample_rate,
        "table_sha256": sha256_bytes(table_text.encode()),
        "files_sha256": files_fingerprint(paths),
    }
    if not is_builtin(bb):  # a plugged-in class: its name is part of what made the numbers
        key_parts["class"] = f"{type(bb).__module__}.{type(bb).__qualname__}"
    return sha256_bytes(json.dumps(key_parts, sort_keys=True).encode()), key_parts


def _cache_folder(cache_dir: str | os.PathLike | None, slug: str, key: str) -> Path:
    """``cache_dir/<slug>-<key[:12]>`` (``cache_dir`` None: the default cache folder)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    return root / f"{slug}-{key[:12]}"


def _open_complete(folder: Path) -> FeatureCache | None:
    """The complete cache in ``folder``, every row checked against its CRC-32, or None.

    None when there is none; when it is unusable (deleted, with a warning: rebuilt); when rows
    changed on disk (with a warning naming them: the cache is turned back into an interrupted
    one whose undone rows are exactly those, so that only they are extracted again).
    """
    if not (folder / "meta.json").exists():
        return None
    try:
        cache = open_cache(folder)
    except HcldError as err:
        warnings.warn(f"{err} Rebuilding it.", stacklevel=3)  # the caller of extract_features
        shutil.rmtree(folder)
        return None
    bad = cache.bad_rows()
    if not len(bad):
        return cache
    shown = ", ".join(cache.ids[i] for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
    warnings.warn(f"feature cache {folder}: {len(bad)} rows no longer match their checksum "
                  f"({shown}): extracting them again.", stacklevel=3)
    done = np.ones(len(cache), dtype=bool)
    done[bad] = False
    atomic_save_npz(folder / "progress.npz", done=done, lengths=cache.lengths, crc=cache.crc)
    (folder / "meta.json").unlink()  # after progress.npz: a crash between leaves it complete
    return None


def _cache_shape(
    bb: Backbone,
    n_samples: np.ndarray,
    layers: tuple[int, ...],
    layer: str | int,
    max_seconds: float | None,
) -> tuple[int, ...]:
    """Array shape ``(N, T, D)`` (``(N, L, T, D)`` for all layers); T: max_seconds or longest."""
    if max_seconds is not None:
        max_frames = bb.frame_count(int(round(max_seconds * bb.sample_rate)))
    else:
        max_frames = max(bb.frame_count(int(k)) for k in n_samples)
    if layer == "all":
        return (len(n_samples), len(layers), max_frames, bb.feature_dim)
    return (len(n_samples), max_frames, bb.feature_dim)


def _batches(todo: np.ndarray, n_samples: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The rows ``todo`` in batches of ``batch_size``, longest first: memory peaks early."""
    order = todo[np.argsort(-n_samples[todo], kind="stable")]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _open_state(
    folder: Path, shape: tuple[int, ...], table_text: str
) -> tuple[np.memmap, dict[str, np.ndarray]]:
    """Write table.csv if needed, then resume an interrupted run or start a fresh one."""
    folder.mkdir(parents=True, exist_ok=True)
    table_path = folder / "table.csv"
    if not table_path.is_file() or table_path.read_text() != table_text:
        atomic_write_text(table_path, table_text)
    resumed = _resume_state(folder, shape)
    if resumed is not None:
        return resumed
    if (folder / "progress.npz").exists() or (folder / "features.npy").exists():
        warnings.warn(
            f"feature cache {folder}: the interrupted run's files are unusable; starting over.",
            stacklevel=3,  # the caller of extract_features
        )
    return _fresh_state(folder, shape)


def extract_features(
    table: pd.DataFrame,
    backbone: str | Backbone = "fbank",
    cache_dir: str | os.PathLike | None = None,
    *,
    max_seconds: float | None = 7.5,
    sample_rate: int = 16000,
    layer: str | int = "last",
    checkpoint: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> FeatureCache:
    """Encode every utterance of ``table`` once with a frozen backbone and cache the features.

    Args:
        table: utterance table (``utterance_id``, ``path``, ``speaker``, ``emotion``, ...).
        backbone: ``"fbank"`` | ``"torchaudio:hubert_base"`` | ``"hf:<model name or folder>"``
            (HuBERT-like or Whisper) | ``"whisper-tiny.en"`` (offline, from a PyPI package) |
            ``"whisper:<CTranslate2 folder>"`` | ``"ct2:<CTranslate2 folder>"`` (Whisper ones
            may end in ``"@30s"``), a name plugged in through
            :mod:`~hcld_lib.features.registry`, or a :class:`Backbone` instance of your own
            (its ``sample_rate`` wins over ``sample_rate``).
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
        threads: torch's intra-op threads while the backbone encodes (``None``: one per core),
            put back afterwards. A pretrained encoder gains from every core (Whisper tiny.en on
            2 cores: 12 s -> 8 s for the quick corpus) even where training keeps one thread per
            process (the quick profile's tiny encoders, which a second thread slows down).

    Returns:
        The complete :class:`FeatureCache`: ``array`` float16 ``[N, T, D]`` (``[N, L, T, D]`` for
        ``layer="all"``) and ``lengths`` ``[N]`` valid frames. An existing complete cache with the
        same key is returned without recomputation; an interrupted one is resumed (only the
        missing rows are computed); an unusable one is rebuilt with a warning, and rows whose
        bytes no longer match their CRC-32 are extracted again, with a warning naming them.
        Every row of the returned cache has been checked against its CRC-32
        (:meth:`FeatureCache.verify`), which reads the whole array once: about 0.1 s for 1000
        fbank utterances.

    Raises:
        HcldError: bad table, unreadable audio (including non-finite or absurd samples), unknown
            backbone, missing weights, NaN or infinite features (naming the file and backbone).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise HcldError(f"batch_size must be a positive int, got {batch_size!r}")
    table = prepare_table(table)
    bb = get_backbone(backbone, checkpoint=checkpoint, sample_rate=sample_rate)
    layers = _resolve_layers(layer, bb.num_layers, bb.spec, bb.exposed_layers, bb.layers_note)
    max_seconds = None if max_seconds is None else float(max_seconds)
    if max_seconds is not None and not max_seconds > 0:
        raise HcldError(f"max_seconds must be positive or None, got {max_seconds!r}")

    table_text = table_csv(table)
    paths = table["path"].tolist()
    key, key_parts = _cache_key(bb, layers, layer, max_seconds, table_text, paths)
    folder = _cache_folder(cache_dir, bb.slug, key)
    cached = _open_complete(folder)
    if cached is not None:
        return cached
    ensure_writable_dir(folder.parent, "feature cache folder (cache_dir)")
    with _extraction_lock(folder):
        # another process may have made it while this one waited for the lock
        cached = _open_complete(folder)
        if cached is not None:
            return cached
        return _extract(table, bb, folder, layers, layer, max_seconds, key, key_parts,
                        table_text, paths, batch_size, device, progress, threads)


@contextlib.contextmanager
def _extraction_lock(folder: Path) -> Iterator[None]:
    """Hold ``.<folder name>.lock`` (beside ``folder``) while this process extracts into it: a
    second process asking for the same cache (two chapters of a batch) waits and then reads it,
    instead of writing the same files at the same time. An advisory lock, released by the system
    when the process ends, however it ends."""
    with open(folder.with_name(f".{folder.name}.lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _extract(table: pd.DataFrame, bb: Backbone, folder: Path, layers: tuple[int, ...],
             layer: str | int, max_seconds: float | None, key: str, key_parts: dict,
             table_text: str, paths: list[str], batch_size: int,
             device: str | torch.device | None, progress: bool, threads: int | None
             ) -> FeatureCache:
    """Extract (or finish extracting) ``folder`` under its lock; see :func:`extract_features`."""
    start = time.time()
    n = len(table)
    n_samples = np.array(
        [audio_num_samples(p, bb.sample_rate, max_seconds) for p in paths], dtype=np.int64
    )
    shape = _cache_shape(bb, n_samples, layers, layer, max_seconds)
    array, state = _open_state(folder, shape, table_text)
    todo = np.flatnonzero(~state["done"])
    dev = resolve_device(device)

    if len(todo):
        with torch_threads(threads):
            bb.load(dev)
            batches = _batches(todo, n_samples, batch_size)
            _run_batches(bb, table, batches, array, state, folder, layers, max_seconds,
                         progress, n)
    del array

    _finish_cache(folder, table, state, bb, layer, layers, max_seconds, shape,
                  key, key_parts, table_text, dev, start)
    # every row as it is on disk now, not as it was computed
    return open_cache(folder, verify=True)


def _write_index(folder: Path, table: pd.DataFrame, state: dict[str, np.ndarray]) -> str:
    """Write index.csv (row, valid frames and CRC32 of each utterance) and return its text."""
    index = pd.DataFrame(
        {
            "utterance_id": table["utterance_id"],
            "row": np.arange(len(table)),
            "length": state["lengths"],
            "crc32": state["crc"],
        }
    )
    index_text = table_csv(index)
    atomic_write_text(folder / "index.csv", index_text)
    return index_text


def _finish_cache(
    folder: Path,
    table: pd.DataFrame,
    state: dict[str, np.ndarray],
    bb: Backbone,
    layer: str | int,
    layers: tuple[int, ...],
    max_seconds: float | None,
    shape: tuple[int, ...],
    key: str,
    key_parts: dict,
    table_text: str,
    dev: torch.device,
    start: float,
) -> None:
    """Write index.csv and meta.json (which marks the cache complete), then drop progress.npz."""
    index_text = _write_index(folder, table, state)
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
        "max_frames": shape[-2],
        "n_utterances": len(table),
        "features_bytes": feat_path.stat().st_size,
        "table_sha256": sha256_bytes(table_text.encode()),
        "index_sha256": sha256_bytes(index_text.encode()),
        "feature_code_version": FEATURE_CODE_VERSION,
        "versions": _versions(),
        "device": str(dev),
        "seconds_last_run": round(time.time() - start, 3),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(folder / "meta.json", meta)
    (folder / "progress.npz").unlink(missing_ok=True)


def _versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "torchaudio", "numpy", "transformers")}


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


def _non_finite(bb: Backbone, path: str, utterance_id: str) -> HcldError:
    return HcldError(
        f"the {bb.spec} backbone gave NaN or infinite features for {path} (utterance "
        f"{utterance_id}); they were not cached. Listen to the file and re-export it, or remove "
        "it from the table; the rows extracted so far are kept, and the next run resumes.")


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
    paths = table["path"].to_numpy()
    max_frames = array.shape[-2]
    squeeze = array.ndim == 3
    bar = progress_bar(total=n_total, initial=int(state["done"].sum()), unit="utt",
                       desc=f"features {bb.spec}", enabled=progress)
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
                    if not np.isfinite(x).all():
                        raise _non_finite(bb, paths[rows[j]], table["utterance_id"][rows[j]])
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
