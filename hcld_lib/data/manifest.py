"""Any corpus by manifest: a CSV with at least ``path, speaker, emotion``.

The file is read as it comes out of a spreadsheet: UTF-8 with or without a byte-order mark, or
UTF-16 (Excel's "Unicode text"), and separated by commas, semicolons (a comma-decimal locale's
CSV), tabs or ``|``: the encoding is told from the bytes, the separator from the header line
(the one that splits it into the required columns). A file in another encoding is refused with
what to save it as; a header that holds the required columns under no separator is refused with
the columns seen.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hcld_lib.data.labels import EMOTIONS, TABLE_COLUMNS, listing, warn_missing_emotions
from hcld_lib.io import HcldError

_GENDERS = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
            "": ""}


def _rows(df: pd.DataFrame, mask: pd.Series, cols: list[str]) -> str:
    """List the offending rows as 'line N: col=value, ...' (CSV line numbers, header = line 1)."""
    bad = df.loc[mask.to_numpy()]
    items = [
        f"line {int(i) + 2}: " + ", ".join(f"{c}={bad.at[i, c]!r}" for c in cols)
        for i in bad.index
    ]
    return listing(items, len(items))


REQUIRED: tuple[str, ...] = ("path", "speaker", "emotion")
SEPARATORS: tuple[str, ...] = (",", ";", "\t", "|")
_SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "'|'"}


def _decode(csv_path: Path, raw: bytes) -> str:
    """The manifest's text: UTF-8 (a byte-order mark dropped) or UTF-16 (with or without one)."""
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        head = raw[:400]
        if len(head) >= 2 and head.count(0) * 3 >= len(head):  # ASCII as UTF-16, no BOM
            zeros_first = head[0::2].count(0) > head[1::2].count(0)
            return raw.decode("utf-16-be" if zeros_first else "utf-16-le")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HcldError(
            f"manifest {csv_path} is not UTF-8 or UTF-16 text ({exc.reason} at byte "
            f"{exc.start}): save it as UTF-8 (in a spreadsheet: CSV UTF-8) and try again"
        ) from exc


def _header_fields(text: str, sep: str) -> list[str]:
    line = next((x for x in text.splitlines() if x.strip()), "")
    return [f.strip() for f in next(csv.reader([line], delimiter=sep), [])]


def _separator(csv_path: Path, text: str) -> str:
    """The separator under which the header holds every required column."""
    for sep in SEPARATORS:
        if set(REQUIRED) <= set(_header_fields(text, sep)):
            return sep
    seen = max((_header_fields(text, sep) for sep in SEPARATORS), key=len)
    missing = [c for c in REQUIRED if c not in seen]
    raise HcldError(
        f"manifest {csv_path} lacks the column(s) {', '.join(missing)}; its header line has "
        f"{', '.join(repr(c) for c in seen) or 'nothing'} (separators tried: comma, semicolon, "
        "tab, '|'). A manifest needs at least the columns path, speaker, emotion, named so in "
        "its first line"
    )


def _read_table(csv_path: Path) -> pd.DataFrame:
    """The manifest as stripped strings; checks that it exists, parses, and has the required
    columns, none of them (nor ``session``, if present) with empty values.
    """
    if not csv_path.is_file():
        raise HcldError(f"manifest {csv_path} does not exist: pass the path of your CSV manifest")
    try:
        raw = csv_path.read_bytes()
    except OSError as exc:
        raise HcldError(f"cannot read manifest {csv_path} ({exc.strerror})") from exc
    text = _decode(csv_path, raw)
    sep = _separator(csv_path, text)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise HcldError(f"cannot read manifest {csv_path} as a {_SEPARATOR_NAMES[sep]}-"
                        f"separated table: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()

    for col in REQUIRED + (("session",) if "session" in df else ()):
        empty = df[col] == ""
        if empty.any():
            raise HcldError(
                f"manifest {csv_path}: {int(empty.sum())} rows have an empty {col!r}:\n"
                + _rows(df, empty, list(REQUIRED))
                + f"\nfill in {col} or remove these rows"
            )
    return df


def _map_emotions(df: pd.DataFrame, csv_path: Path,
                  label_map: Mapping[str, str | None] | None) -> pd.DataFrame:
    """Apply ``label_map`` (dropping rows mapped to ``None``), then check that every emotion is
    one of :data:`EMOTIONS` and that rows are left.
    """
    if label_map is not None:
        mapped = df["emotion"].map(lambda e: label_map.get(e, e))
        keep = mapped.notna().to_numpy()
        df = df.assign(emotion=mapped)[keep]
    unknown = ~df["emotion"].isin(EMOTIONS)
    if unknown.any():
        names = sorted(set(df.loc[unknown, "emotion"]))
        raise HcldError(
            f"manifest {csv_path}: {int(unknown.sum())} rows have emotions outside "
            f"{', '.join(EMOTIONS)} ({', '.join(names)}):\n"
            + _rows(df, unknown, ["emotion", "path"])
            + "\nrename them with label_map (e.g. {'happy': 'hap', 'excited': 'hap'}) or map "
            "them to None to drop them"
        )
    if df.empty:
        raise HcldError(f"manifest {csv_path} has no rows left (after label_map)")
    return df


def _resolve_paths(df: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Make ``path`` absolute (relative to the CSV's folder) and check that every file exists
    and that no two rows point to the same file (after resolving links).
    """
    base = csv_path.parent
    paths = [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for p in df["path"]]
    df = df.assign(path=paths)
    absent = ~df["path"].map(os.path.isfile)
    if absent.any():
        raise HcldError(
            f"manifest {csv_path}: {int(absent.sum())} audio files do not exist (paths are "
            f"relative to {base}):\n" + _rows(df, absent, ["path"])
            + "\nfix the paths or remove these rows"
        )
    real = df["path"].map(os.path.realpath)
    dup = real.duplicated(keep=False)
    if dup.any():
        raise HcldError(
            f"manifest {csv_path}: {int(dup.sum())} rows point to the same audio file as another "
            "row:\n" + _rows(df, dup, ["path", "emotion"])
            + "\nkeep one row per file"
        )
    return df


def _utterance_ids(df: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Fill ``utterance_id`` (blank or absent: the file stem) and check that ids are unique."""
    if "utterance_id" in df.columns:
        blank = df["utterance_id"] == ""
        ids = df["utterance_id"].where(~blank, df["path"].map(lambda p: Path(p).stem))
        origin = "utterance_id"
    else:
        ids = df["path"].map(lambda p: Path(p).stem)
        origin = "file stem"
    df = df.assign(utterance_id=ids)
    dup_id = df["utterance_id"].duplicated(keep=False)
    if dup_id.any():
        hint = ("" if origin == "utterance_id" else
                "; the id defaults to the file name without extension, add a unique "
                "utterance_id column to the manifest")
        raise HcldError(
            f"manifest {csv_path}: {int(dup_id.sum())} rows share an utterance id ({origin}):\n"
            + _rows(df, dup_id, ["utterance_id", "path"]) + f"\nids must be unique{hint}"
        )
    return df


def _gender_and_duration(df: pd.DataFrame, csv_path: Path) -> None:
    """In place: ``gender`` normalised to F/M/"" (default ""), ``duration`` (if any) to float."""
    if "gender" in df.columns:
        g = df["gender"].str.lower().map(_GENDERS)
        bad_g = g.isna()
        if bad_g.any():
            raise HcldError(
                f"manifest {csv_path}: {int(bad_g.sum())} rows have a gender other than F/M/empty:"
                "\n" + _rows(df, bad_g, ["gender", "speaker"])
                + "\nuse F, M (or female/male), or leave it empty"
            )
        df["gender"] = g
    else:
        df["gender"] = ""
    if "duration" in df.columns:
        dur = pd.to_numeric(df["duration"].replace("", None), errors="coerce")
        bad_d = dur.isna() & (df["duration"] != "")
        if bad_d.any():
            raise HcldError(
                f"manifest {csv_path}: duration is not a number in {int(bad_d.sum())} rows:\n"
                + _rows(df, bad_d, ["duration", "path"])
            )
        df["duration"] = dur.astype(float)


def _default_session(df: pd.DataFrame, csv_path: Path) -> None:
    """In place: without a ``session`` column, session = speaker (with a warning)."""
    if "session" not in df.columns:
        warnings.warn(
            f"manifest {csv_path} has no 'session' column: session = speaker, so protocol "
            "'loso' becomes leave-one-speaker-out",
            UserWarning,
            stacklevel=3,  # the caller of load_manifest
        )
        df["session"] = df["speaker"]


def load_manifest(
    csv_path: str | os.PathLike, label_map: Mapping[str, str | None] | None = None
) -> pd.DataFrame:
    """Read a corpus from a manifest CSV.

    Required columns: ``path`` (relative to the CSV's folder, or absolute), ``speaker``,
    ``emotion``. Optional: ``session`` (default: the speaker, with a warning, so that ``loso``
    becomes leave-one-speaker-out), ``gender`` (F/M, female/male, or empty; default ``""``),
    ``utterance_id`` (default: the file stem, which must then be unique), ``duration`` (seconds).
    Other columns (e.g. ``split``) are kept after the standard ones. Row order is the file's.

    Args:
        csv_path: the manifest.
        label_map: renames emotion labels before they are checked, e.g.
            ``{"happy": "hap", "excited": "hap", "neutral": "neu"}``; a label mapped to ``None``
            drops its rows. Labels not in the map are kept as they are.

    A table without one of the four emotions (e.g. after ``label_map`` dropped one) is returned
    with a warning saying which emotions it has.

    Raises:
        HcldError: missing file or columns, empty values, unknown emotion names (after
            ``label_map``), missing audio files, duplicate audio files or utterance ids, unknown
            gender values. The message lists the offending rows (CSV line numbers and values).
    """
    csv_path = Path(csv_path).expanduser().absolute()
    df = _read_table(csv_path)
    df = _map_emotions(df, csv_path, label_map)
    df = _resolve_paths(df, csv_path)
    df = _utterance_ids(df, csv_path)
    _gender_and_duration(df, csv_path)
    _default_session(df, csv_path)
    front = [*TABLE_COLUMNS] + (["duration"] if "duration" in df.columns else [])
    df = df[front + [c for c in df.columns if c not in front]]
    warn_missing_emotions(df, f"manifest {csv_path}")
    return df.reset_index(drop=True)
