"""The feature cache: frozen features of a corpus on disk, read by training as a memmap.

    table --load_audio--> waveforms --backbone--> [T, D] per utterance --> cache folder (float16)

:func:`hcld_lib.features.extract.extract_features` writes a cache; :func:`open_cache` reads one.
Cache folder ``cache_dir/<backbone-slug>-<key[:12]>/``:

- ``features.npy``: float16, ``[N, T, D]`` (``[N, L, T, D]`` for ``layer="all"``), rows in table
  order, frames at and after the valid length are zero. Opened as a read-only memmap.
- ``index.csv``: ``utterance_id, row, length`` (valid frames) and ``crc32`` of each row's bytes,
  checked by :meth:`FeatureCache.verify` (``python -m hcld_lib.features verify <folder>`` checks
  a whole cache from the shell).
- ``table.csv``: the utterance table that made the cache.
- ``meta.json``: everything that made it (the key and its parts); written last, atomically: a
  folder without it is incomplete and is resumed by ``extract_features``.
- ``progress.npz`` (only while extracting): which rows are done, flushed after every batch.

The key hashes the table (ids, labels, paths, each file's size and mtime), the backbone, the
checkpoint identity (file SHA-256 for torchaudio; config + weight files' SHA-256 for Hugging
Face), the layer, ``max_seconds``, ``sample_rate`` and :data:`FEATURE_CODE_VERSION`: changing any
of them makes a new cache instead of reusing stale features.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hcld_lib.data.labels import TABLE_COLUMNS
from hcld_lib.features.backbone import sha256_bytes
from hcld_lib.io import HcldError, read_csv, read_json

#: Bump when the numbers a backbone writes change for the same inputs: old caches stop matching.
FEATURE_CODE_VERSION = 1
CACHE_FORMAT = "hcld-feature-cache"
CACHE_FORMAT_VERSION = 1


def prepare_table(table: pd.DataFrame) -> pd.DataFrame:
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


def table_csv(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def _readtable_csv(path: Path, remedy: str) -> pd.DataFrame:
    return read_csv(path, what="utterance table", remedy=remedy, columns=TABLE_COLUMNS,
                    dtype={c: str for c in TABLE_COLUMNS}, keep_default_na=False)


def files_fingerprint(paths: Sequence[str]) -> str:
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

    def _row_numbers(self, rows: Iterable[int | str] | None) -> np.ndarray:
        """``rows`` (row numbers or utterance ids; None: all) as sorted unique row numbers."""
        if rows is None:
            return np.arange(len(self))
        picked = [self.row(r) if isinstance(r, str) else int(r) for r in rows]
        out = np.unique(np.asarray(picked, dtype=np.int64))
        if len(out) and (out[0] < 0 or out[-1] >= len(self)):
            raise HcldError(f"rows outside 0..{len(self) - 1} asked of feature cache {self.path}")
        return out

    def bad_rows(self, rows: Iterable[int | str] | None = None) -> np.ndarray:
        """The rows among ``rows`` (None: all) whose bytes no longer match their CRC-32."""
        changed = [i for i in self._row_numbers(rows)
                   if zlib.crc32(self.array[i].data) != self.crc[i]]
        return np.asarray(changed, dtype=np.int64)

    def verify(self, rows: Iterable[int | str] | None = None) -> None:
        """Check the given rows (row numbers or utterance ids; None: every row) against the CRC-32
        that extraction stored for each; reads those rows once.

        Cost: a CRC-32 of each row's bytes (``T * D * 2``), about 1 s per GB from the page
        cache (0.05 s for all rows of a 1000-utterance fbank cache, 57 MB; about 3 s for
        IEMOCAP's HuBERT-base cache, 3.2 GB); the disk's read speed when the rows are not cached.

        Raises:
            HcldError: naming the cache folder, how many rows fail, their utterance ids and row
                numbers, and to delete the folder and re-extract.
        """
        picked = self._row_numbers(rows)
        bad = self.bad_rows(picked)
        if len(bad):
            shown = ", ".join(f"{self.ids[i]} (row {i})" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise HcldError(
                f"feature cache {self.path} is corrupted: {len(bad)} of the {len(picked)} rows "
                f"checked no longer match their checksum: {shown}{more}. Its features changed "
                "on disk after extraction; delete it and re-extract (remove the folder and run "
                "extract_features again with the same arguments)."
            )

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, backbone={self.meta.get('backbone')!r}, "
            f"shape={tuple(self.array.shape)})"
        )


def _remedy(path: Path, capital: bool = False) -> str:
    return (f"{'Delete' if capital else 'delete'} the cache folder {path} and re-extract, or "
            "re-run extract_features with the same arguments (it resumes an incomplete cache and "
            "rebuilds a corrupted one)")


def _corrupt(path: Path, what: str) -> HcldError:
    return HcldError(f"feature cache {path} is unusable: {what}. {_remedy(path, capital=True)}.")


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
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
    meta = read_json(meta_path, what="feature cache file", remedy=_remedy(path))
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
        if sha256_bytes(f.read_bytes()) != meta.get(key):
            raise _corrupt(
                path, f"{name} does not match its checksum in meta.json (it was modified)"
            )
    feat_path = path / "features.npy"
    if not feat_path.is_file():
        raise _corrupt(path, "features.npy is missing")
    try:
        shape, dtype, offset = npy_header(feat_path)
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
    table = _readtable_csv(path / "table.csv", remedy=_remedy(path))
    index = read_csv(path / "index.csv", what="feature cache file", remedy=_remedy(path),
                     dtype={"utterance_id": str}, keep_default_na=False)
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
