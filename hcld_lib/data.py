"""Utterance tables: IEMOCAP, any corpus by manifest, and the embedded synthetic corpus.

Every loader returns the same table (SPEC §2), a :class:`pandas.DataFrame` with one row per
utterance and the columns

=================  ===========================================================================
``utterance_id``   unique string
``path``           absolute path of the audio file (string)
``speaker``        speaker id (IEMOCAP: session + the actor's gender letter, e.g. ``Ses01M``)
``emotion``        one of :data:`hcld_lib.config.EMOTIONS` (``neu``, ``hap``, ``ang``, ``sad``)
``session``        recording session (IEMOCAP: ``Session1``..``Session5``); the unit of ``loso``
``gender``         ``"F"``, ``"M"`` or ``""`` (unknown)
``duration``       seconds, where known
=================  ===========================================================================

:func:`load_corpus` is the notebooks' single entry point. ``load_audio`` (from
:mod:`hcld_lib.audio`) and :func:`synthesize_corpus` are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hcld_lib.config import EMOTIONS
from hcld_lib.io import HcldError
from hcld_lib.synthetic import synthesize_corpus

TABLE_COLUMNS: tuple[str, ...] = ("utterance_id", "path", "speaker", "emotion", "session", "gender")
"""The columns every utterance table has (``duration`` follows where known)."""

IEMOCAP_LABELS: dict[str, str] = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang",
                                  "sad": "sad"}
"""IEMOCAP's categorical labels kept in the 4-class set (``exc`` merged into ``hap``)."""

_MAX_LISTED = 10
_IEMOCAP_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)"
)
_SESSION_DIR = re.compile(r"^Session(\d+)$")


def __getattr__(name: str) -> Any:
    # load_audio lives in hcld_lib.audio (soundfile/torchaudio); import it only when asked for.
    if name == "load_audio":
        from hcld_lib.audio import load_audio

        return load_audio
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _listing(items: list[str], total: int | None = None) -> str:
    """``items`` one per line, at most ``_MAX_LISTED``, then '... and N more'."""
    total = len(items) if total is None else total
    lines = [f"  {x}" for x in items[:_MAX_LISTED]]
    if total > _MAX_LISTED:
        lines.append(f"  ... and {total - _MAX_LISTED} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------------------


def _find_iemocap_release(root: Path) -> Path:
    def sessions(p: Path) -> list[Path]:
        try:
            return [c for c in p.iterdir() if c.is_dir() and _SESSION_DIR.match(c.name)]
        except OSError:
            return []

    if sessions(root):
        return root
    candidates = sorted(c for c in root.iterdir() if c.is_dir() and sessions(c))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise HcldError(
            f"{root} holds several IEMOCAP-like folders:\n"
            + _listing([str(c) for c in candidates])
            + "\npass the one you mean to load_iemocap"
        )
    raise HcldError(
        f"{root} holds no IEMOCAP release: expected Session1..Session5 folders in it or in one of "
        "its subfolders (e.g. IEMOCAP_full_release/); pass the folder that contains Session1"
    )


def load_iemocap(root: str | os.PathLike) -> pd.DataFrame:
    """Read the 4-class utterance table of an IEMOCAP release.

    Labels come from the lines that start with ``[`` in ``SessionN/dialog/EmoEvaluation/*.txt``
    (the per-annotator subfolders ``Categorical/``, ``Attribute/``, ``Self-evaluation/`` are not
    read), e.g. ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5, 2.5, 2.5]``.
    ``exc`` is merged into ``hap``; every label other than neu/hap/exc/ang/sad is dropped.

    The speaker is the session plus the gender letter that begins the utterance's *last* segment
    (``Ses01F_impro01_M000`` is speaker ``Ses01M``; the letter in the dialog name only says who
    wore the motion-capture markers). ``session`` is ``SessionN``, ``gender`` that letter,
    ``duration`` = end - start of the label line, ``path`` =
    ``SessionN/sentences/wav/<dialog>/<utterance>.wav``. Rows are sorted by ``utterance_id``.

    On the full release: 5531 rows (neu 1708, hap 1636, ang 1103, sad 1084).

    Args:
        root: the release folder (holding Session1..5) or its parent.

    Raises:
        HcldError: missing folder, a session without label files, a malformed utterance name, or
            labelled utterances whose WAV is missing (all of them listed, up to ten).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HcldError(
            f"IEMOCAP folder {root} does not exist (or is not a folder): pass the path of your "
            "IEMOCAP release (the folder with Session1..Session5, or its parent)"
        )
    release = _find_iemocap_release(root.absolute())
    session_dirs = sorted(
        (c for c in release.iterdir() if c.is_dir() and _SESSION_DIR.match(c.name)),
        key=lambda c: int(_SESSION_DIR.match(c.name).group(1)),
    )
    found = [c.name for c in session_dirs]
    expected = [f"Session{i}" for i in range(1, 6)]
    if found != expected:
        missing = [s for s in expected if s not in found]
        warnings.warn(
            f"{release} holds {', '.join(found)}"
            + (f"; {', '.join(missing)} missing" if missing else "")
            + ": the table covers only these sessions (the full release has Session1..Session5)",
            UserWarning,
            stacklevel=2,
        )
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    bad_names: list[str] = []
    for sdir in session_dirs:
        label_dir = sdir / "dialog" / "EmoEvaluation"
        files = sorted(
            p for p in label_dir.glob("*.txt") if p.is_file() and not p.name.startswith(".")
        ) if label_dir.is_dir() else []
        if not files:
            raise HcldError(
                f"{label_dir} holds no label files (*.txt): the IEMOCAP copy is incomplete; "
                f"re-extract {sdir.name} from the release archive"
            )
        for txt in files:
            for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.startswith("["):
                    continue
                m = _IEMOCAP_LINE.match(line)
                if m is None:
                    continue
                utt, label = m["utt"], m["label"].lower()
                emotion = IEMOCAP_LABELS.get(label)
                if emotion is None:
                    continue
                dialog, _, last = utt.rpartition("_")
                letter = last[:1].upper()
                if not dialog or letter not in ("F", "M"):
                    bad_names.append(f"{txt}: {utt!r}")
                    continue
                if utt in seen:
                    raise HcldError(
                        f"utterance {utt} is labelled twice, in {seen[utt]} and {txt}: remove the "
                        "extra label file"
                    )
                seen[utt] = txt
                session_no = int(_SESSION_DIR.match(sdir.name).group(1))
                rows.append(dict(
                    utterance_id=utt,
                    path=str(sdir / "sentences" / "wav" / dialog / f"{utt}.wav"),
                    speaker=f"Ses{session_no:02d}{letter}",
                    emotion=emotion,
                    session=sdir.name,
                    gender=letter,
                    duration=round(float(m["end"]) - float(m["start"]), 4),
                ))
    if bad_names:
        raise HcldError(
            "utterance names whose last segment does not start with F or M (cannot tell the "
            "speaker):\n" + _listing(bad_names) + "\nfix or remove these label lines"
        )
    if not rows:
        raise HcldError(f"no neu/hap/exc/ang/sad labels found under {release}")
    missing_wavs = [r["path"] for r in rows if not os.path.isfile(r["path"])]
    if missing_wavs:
        raise HcldError(
            f"{len(missing_wavs)} labelled IEMOCAP utterances have no WAV file:\n"
            + _listing(sorted(missing_wavs))
            + "\nexpected SessionN/sentences/wav/<dialog>/<utterance>.wav; re-extract the "
            "sentences/wav folders of the release"
        )
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "duration"])
    return table.sort_values("utterance_id", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------

_GENDERS = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
            "": ""}


def _rows(df: pd.DataFrame, mask: pd.Series, cols: list[str]) -> str:
    """List the offending rows as 'line N: col=value, ...' (CSV line numbers, header = line 1)."""
    bad = df.loc[mask.to_numpy()]
    items = [
        f"line {int(i) + 2}: " + ", ".join(f"{c}={bad.at[i, c]!r}" for c in cols)
        for i in bad.index
    ]
    return _listing(items, len(items))


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

    Raises:
        HcldError: missing file or columns, empty values, unknown emotion names (after
            ``label_map``), missing audio files, duplicate audio files or utterance ids, unknown
            gender values. The message lists the offending rows (CSV line numbers and values).
    """
    csv_path = Path(csv_path).expanduser().absolute()
    if not csv_path.is_file():
        raise HcldError(f"manifest {csv_path} does not exist: pass the path of your CSV manifest")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise HcldError(f"cannot read manifest {csv_path} as CSV: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("path", "speaker", "emotion") if c not in df.columns]
    if missing:
        raise HcldError(
            f"manifest {csv_path} lacks the column(s) {', '.join(missing)}; it has "
            f"{', '.join(df.columns) or 'none'}. A manifest needs at least path, speaker, emotion"
        )
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()

    for col in ("path", "speaker", "emotion") + (("session",) if "session" in df else ()):
        empty = df[col] == ""
        if empty.any():
            raise HcldError(
                f"manifest {csv_path}: {int(empty.sum())} rows have an empty {col!r}:\n"
                + _rows(df, empty, ["path", "speaker", "emotion"])
                + f"\nfill in {col} or remove these rows"
            )

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

    if "session" not in df.columns:
        warnings.warn(
            f"manifest {csv_path} has no 'session' column: session = speaker, so protocol "
            "'loso' becomes leave-one-speaker-out",
            UserWarning,
            stacklevel=2,
        )
        df["session"] = df["speaker"]
    front = [*TABLE_COLUMNS] + (["duration"] if "duration" in df.columns else [])
    df = df[front + [c for c in df.columns if c not in front]]
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# One entry point
# ----------------------------------------------------------------------------------------------

DATASETS: tuple[str, ...] = ("synthetic", "iemocap", "manifest")


def default_synthetic_dir(seed: int = 0, n_utterances: int = 1000, **synth_kwargs: Any) -> Path:
    """Where :func:`load_corpus` keeps a synthetic corpus when no folder is given.

    ``$HCLD_DATA_DIR`` (default ``./data``) / ``synthetic_n<N>_seed<S>[_<hash of other knobs>]``.
    """
    name = f"synthetic_n{int(n_utterances)}_seed{int(seed)}"
    if synth_kwargs:
        key = json.dumps(synth_kwargs, sort_keys=True, default=str).encode()
        name += "_" + hashlib.sha1(key).hexdigest()[:8]
    return Path(os.environ.get("HCLD_DATA_DIR", "data")) / name


def load_corpus(
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    synthetic_dir: str | os.PathLike | None = None,
    seed: int = 0,
    n_utterances: int = 1000,
    label_map: Mapping[str, str | None] | None = None,
    **synth_kwargs: Any,
) -> pd.DataFrame:
    """The notebooks' single entry point to an utterance table.

    Args:
        dataset: ``"synthetic"`` (the embedded default: made in ``synthetic_dir`` if not there
            yet, see :func:`synthesize_corpus`), ``"iemocap"`` (``root`` = your release) or
            ``"manifest"`` (``manifest`` = your CSV).
        root: IEMOCAP folder (``dataset="iemocap"``).
        manifest: manifest CSV (``dataset="manifest"``); ``label_map`` renames/drops labels.
        synthetic_dir: folder of the synthetic corpus; default :func:`default_synthetic_dir`.
        seed, n_utterances, **synth_kwargs: passed to :func:`synthesize_corpus`
            (``emotion_strength``, ``confounding``, ...).
    """
    if dataset not in DATASETS:
        raise HcldError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset != "synthetic" and synth_kwargs:
        raise HcldError(
            f"{', '.join(sorted(synth_kwargs))} only apply to dataset='synthetic', not {dataset!r}"
        )
    if dataset == "iemocap":
        if root is None:
            raise HcldError("dataset='iemocap' needs root=<folder of your IEMOCAP release>")
        return load_iemocap(root)
    if dataset == "manifest":
        if manifest is None:
            raise HcldError("dataset='manifest' needs manifest=<path of your CSV>")
        return load_manifest(manifest, label_map=label_map)
    if synthetic_dir is None:
        synthetic_dir = default_synthetic_dir(seed, n_utterances, **synth_kwargs)
    return synthesize_corpus(synthetic_dir, n_utterances=n_utterances, seed=seed, **synth_kwargs)


__all__ = [
    "DATASETS",
    "IEMOCAP_LABELS",
    "TABLE_COLUMNS",
    "default_synthetic_dir",
    "load_audio",  # noqa: F822  (provided lazily by __getattr__ from hcld_lib.audio)
    "load_corpus",
    "load_iemocap",
    "load_manifest",
    "synthesize_corpus",
]
