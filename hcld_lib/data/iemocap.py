"""IEMOCAP: the 4-class utterance table of a release (bring your own licensed copy)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from hcld_lib.data.labels import TABLE_COLUMNS, listing, warn_missing_emotions
from hcld_lib.io import HcldError

IEMOCAP_LABELS: dict[str, str] = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang",
                                  "sad": "sad"}
"""IEMOCAP's categorical labels kept in the 4-class set (``exc`` merged into ``hap``)."""


_IEMOCAP_LINE = re.compile(
    r"^\[\s*(?P<start>\d+(?:\.\d*)?)\s*-\s*(?P<end>\d+(?:\.\d*)?)\s*\]\s+(?P<utt>\S+)\s+(?P<label>\S+)"
)
_SESSION_DIR = re.compile(r"^Session(\d+)$")


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
            + listing([str(c) for c in candidates])
            + "\npass the one you mean to load_iemocap"
        )
    raise HcldError(
        f"{root} holds no IEMOCAP release: expected Session1..Session5 folders in it or in one of "
        "its subfolders (e.g. IEMOCAP_full_release/); pass the folder that contains Session1"
    )


def _session_dirs(release: Path) -> list[Path]:
    """The ``SessionN`` folders of ``release`` in session order; warns unless they are exactly
    Session1..Session5.
    """
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
            stacklevel=3,  # the caller of load_iemocap
        )
    return session_dirs


def _label_files(sdir: Path) -> list[Path]:
    """The label files ``sdir/dialog/EmoEvaluation/*.txt`` (sorted; at least one)."""
    label_dir = sdir / "dialog" / "EmoEvaluation"
    files = sorted(
        p for p in label_dir.glob("*.txt") if p.is_file() and not p.name.startswith(".")
    ) if label_dir.is_dir() else []
    if not files:
        raise HcldError(
            f"{label_dir} holds no label files (*.txt): the IEMOCAP copy is incomplete; "
            f"re-extract {sdir.name} from the release archive"
        )
    return files


_LINE_FORMAT = "'[START - END]<TAB>utterance<TAB>label<TAB>[V, A, D]', times in seconds"


def _label_lines(txt: Path, skipped: dict[Path, list[tuple[int, str]]]
                 ) -> list[tuple[int, re.Match]]:
    """``(line number, match)`` of the label lines of ``txt`` (those that start with ``[``).

    Lines that start with ``[`` but do not parse go to ``skipped[txt]``; a file none of whose
    label lines parse is refused.
    """
    parsed, unread = [], []
    text = txt.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue
        m = _IEMOCAP_LINE.match(line)
        if m is None:
            unread.append((number, line.strip()))
        else:
            parsed.append((number, m))
    if unread and not parsed:
        number, line = unread[0]
        raise HcldError(
            f"{txt}: none of its {len(unread)} label lines can be read (line {number}: "
            f"{line!r}); a label line reads {_LINE_FORMAT}. Re-extract this file from the "
            "release archive, or fix its lines")
    if unread:
        skipped[txt] = unread
    return parsed


def _label_rows(txt: Path, sdir: Path, seen: dict[str, Path], bad_names: list[str],
                skipped: dict[Path, list[tuple[int, str]]]) -> list[dict[str, Any]]:
    """The 4-class table rows of one label file of session folder ``sdir``.

    Records each utterance in ``seen`` (utterance -> label file; a second label raises), appends
    names whose speaker cannot be told to ``bad_names`` and lines that do not parse to
    ``skipped``; refuses a kept utterance that ends before it starts.
    """
    session_no = int(_SESSION_DIR.match(sdir.name).group(1))
    rows: list[dict[str, Any]] = []
    for number, m in _label_lines(txt, skipped):
        utt, label = m["utt"], m["label"].lower()
        emotion = IEMOCAP_LABELS.get(label)
        if emotion is None:
            continue
        start, end = float(m["start"]), float(m["end"])
        if end < start:
            raise HcldError(
                f"{txt}, line {number}: utterance {utt} ends ({end:g} s) before it starts "
                f"({start:g} s); fix the times of this label line")
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
        rows.append(dict(
            utterance_id=utt,
            path=str(sdir / "sentences" / "wav" / dialog / f"{utt}.wav"),
            speaker=f"Ses{session_no:02d}{letter}",
            emotion=emotion,
            session=sdir.name,
            gender=letter,
            duration=round(end - start, 4),
        ))
    return rows


def _warn_skipped(skipped: dict[Path, list[tuple[int, str]]]) -> None:
    """One warning for every label line that did not parse: how many, in which files."""
    if not skipped:
        return
    total = sum(len(v) for v in skipped.values())
    items = [f"{txt}: {len(lines)} line(s), e.g. line {lines[0][0]}: {lines[0][1]!r}"
             for txt, lines in skipped.items()]
    warnings.warn(
        f"{total} IEMOCAP label line(s) in {len(skipped)} file(s) cannot be read and were "
        f"skipped, with their utterances:\n{listing(items)}\na label line reads {_LINE_FORMAT}; "
        "fix these lines to keep their utterances",
        UserWarning, stacklevel=3)  # the caller of load_iemocap


def _check_rows(rows: list[dict[str, Any]], bad_names: list[str], release: Path) -> None:
    """Raise on unreadable utterance names, on no rows at all, and on missing WAV files."""
    if bad_names:
        raise HcldError(
            "utterance names whose last segment does not start with F or M (cannot tell the "
            "speaker):\n" + listing(bad_names) + "\nfix or remove these label lines"
        )
    if not rows:
        raise HcldError(f"no neu/hap/exc/ang/sad labels found under {release}")
    missing_wavs = [r["path"] for r in rows if not os.path.isfile(r["path"])]
    if missing_wavs:
        raise HcldError(
            f"{len(missing_wavs)} labelled IEMOCAP utterances have no WAV file:\n"
            + listing(sorted(missing_wavs))
            + "\nexpected SessionN/sentences/wav/<dialog>/<utterance>.wav; re-extract the "
            "sentences/wav folders of the release"
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

    Label lines that start with ``[`` but do not parse (``[15.0 -]``, ``[1e3 - 2]``) are skipped
    with one warning that counts them and names their files; a label file none of whose label
    lines parse is refused (it is not a label file of the release). A table without one of the
    four emotions is returned with a warning saying which emotions it has.

    Raises:
        HcldError: missing folder, a session without label files, a label file with no readable
            label line, a kept utterance that ends before it starts (file and line), a malformed
            utterance name, or labelled utterances whose WAV is missing (all of them listed, up to
            ten).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HcldError(
            f"IEMOCAP folder {root} does not exist (or is not a folder): pass the path of your "
            "IEMOCAP release (the folder with Session1..Session5, or its parent)"
        )
    release = _find_iemocap_release(root.absolute())
    rows: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    bad_names: list[str] = []
    skipped: dict[Path, list[tuple[int, str]]] = {}
    for sdir in _session_dirs(release):
        for txt in _label_files(sdir):
            rows += _label_rows(txt, sdir, seen, bad_names, skipped)
    _check_rows(rows, bad_names, release)
    _warn_skipped(skipped)
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "duration"])
    warn_missing_emotions(table, f"the IEMOCAP release {release}")
    return table.sort_values("utterance_id", kind="stable").reset_index(drop=True)
