"""Utterance-table loaders: IEMOCAP (with its traps), manifests, the single entry point."""

from __future__ import annotations

import warnings
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hcld_lib import data
from hcld_lib.data import load_corpus, load_iemocap, load_manifest
from hcld_lib.data.labels import EMOTIONS
from hcld_lib.io import HcldError

COLUMNS = ["utterance_id", "path", "speaker", "emotion", "session", "gender", "duration"]


def _wav(path: Path, seconds: float = 0.1, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.zeros(int(seconds * sr), dtype="<i2").tobytes())


# ----------------------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------------------

# (utterance, label, start, end) per dialog; the first dialog of each session carries the traps.
def _dialogs(s: int) -> dict[str, list[tuple[str, str, float, float]]]:
    return {
        f"Ses0{s}F_impro01": [
            (f"Ses0{s}F_impro01_F000", "neu", 6.2901, 8.2357),
            (f"Ses0{s}F_impro01_M000", "ang", 8.5, 10.25),  # male actor inside an F dialog
            (f"Ses0{s}F_impro01_M001", "exc", 11.0, 12.5),  # exc -> hap
            (f"Ses0{s}F_impro01_F001", "fru", 13.0, 14.0),  # dropped
            (f"Ses0{s}F_impro01_F002", "xxx", 14.5, 15.0),  # dropped
        ],
        f"Ses0{s}M_script01_1": [
            (f"Ses0{s}M_script01_1_F000", "sad", 1.0, 3.5),
            (f"Ses0{s}M_script01_1_M000", "hap", 4.0, 5.0),
            (f"Ses0{s}M_script01_1_M001", "sur", 5.5, 6.0),  # dropped
        ],
    }


def _label_file(rows: list[tuple[str, str, float, float]]) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for utt, label, start, end in rows:
        lines += [
            f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
            "C-E1:\tNeutral;\t()",
            "C-E2:\tAnger;\t(angry)",
            "A-E2:\tval 3; act 2; dom  2;\t()",
            "",
        ]
    return "\n".join(lines) + "\n"


def make_iemocap(parent: Path, sessions: tuple[int, ...] = (1, 2, 3, 4, 5),
                 with_wavs: bool = True) -> Path:
    """An IEMOCAP-shaped tree under ``parent/IEMOCAP_full_release``; returns the release folder."""
    release = parent / "IEMOCAP_full_release"
    for s in sessions:
        sdir = release / f"Session{s}"
        emo = sdir / "dialog" / "EmoEvaluation"
        for dialog, rows in _dialogs(s).items():
            (emo / "Categorical").mkdir(parents=True, exist_ok=True)
            (emo / f"{dialog}.txt").write_text(_label_file(rows))
            # Per-annotator files: must be ignored (they would add a wrong label and a row).
            (emo / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
                f"[0.1 - 0.2]\t{dialog}_F999\tang\t[1, 1, 1]\n{rows[0][0]} :Anger; ()\n"
            )
            (emo / "Attribute").mkdir(exist_ok=True)
            (emo / "Attribute" / f"{dialog}_e1_atr.txt").write_text(
                f"[0.1 - 0.2]\t{dialog}_M999\tsad\t[1, 1, 1]\n"
            )
            if with_wavs:
                for utt, *_ in rows:
                    _wav(sdir / "sentences" / "wav" / dialog / f"{utt}.wav")
    return release


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iemocap(tmp_path_factory.mktemp("iemo"))


def test_iemocap_table(iemocap: Path) -> None:
    table = load_iemocap(iemocap)
    assert list(table.columns) == COLUMNS
    assert len(table) == 5 * 5  # per session: neu, ang, exc->hap, sad, hap
    assert list(table["utterance_id"]) == sorted(table["utterance_id"])
    assert table["emotion"].value_counts().to_dict() == {"hap": 10, "neu": 5, "ang": 5, "sad": 5}
    rows = table.set_index("utterance_id")
    # Speaker from the last segment's letter, not from the dialog name.
    assert rows.at["Ses01F_impro01_M000", "speaker"] == "Ses01M"
    assert rows.at["Ses01F_impro01_M000", "gender"] == "M"
    assert rows.at["Ses03M_script01_1_F000", "speaker"] == "Ses03F"
    assert rows.at["Ses01F_impro01_M001", "emotion"] == "hap"  # exc merged
    assert rows.at["Ses01F_impro01_M000", "emotion"] == "ang"
    assert rows.at["Ses01F_impro01_F000", "emotion"] == "neu"  # not the Categorical 'Anger'
    assert rows.at["Ses04F_impro01_F000", "session"] == "Session4"
    assert rows.at["Ses01F_impro01_F000", "duration"] == pytest.approx(8.2357 - 6.2901)
    assert not table["utterance_id"].str.contains("F001|F002|M999|F999").any()
    assert set(table["speaker"]) == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    for row in table.itertuples():
        p = Path(row.path)
        assert p.is_absolute() and p.is_file()
        assert p == iemocap / row.session / "sentences" / "wav" / row.utterance_id.rsplit(
            "_", 1)[0] / f"{row.utterance_id}.wav"


def test_iemocap_root_may_be_the_parent(iemocap: Path) -> None:
    pd.testing.assert_frame_equal(load_iemocap(iemocap.parent), load_iemocap(iemocap))


def test_iemocap_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(HcldError, match=f"{tmp_path / 'nowhere'}.*does not exist"):
        load_iemocap(tmp_path / "nowhere")


def test_iemocap_folder_without_sessions(tmp_path: Path) -> None:
    (tmp_path / "something").mkdir()
    with pytest.raises(HcldError, match=f"{tmp_path}.*Session1"):
        load_iemocap(tmp_path)


def test_iemocap_session_without_label_files(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    for txt in (release / "Session3" / "dialog" / "EmoEvaluation").glob("*.txt"):
        txt.unlink()
    with pytest.raises(HcldError, match=r"Session3/dialog/EmoEvaluation holds no label files"):
        load_iemocap(release)


def test_iemocap_missing_wav_names_the_path(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    gone = release / "Session2" / "sentences" / "wav" / "Ses02F_impro01" / "Ses02F_impro01_M000.wav"
    gone.unlink()
    with pytest.raises(HcldError, match=r"(?s)1 labelled IEMOCAP utterances have no WAV.*"
                       + str(gone).replace("/", r"/") + ".*re-extract"):
        load_iemocap(tmp_path)


def test_iemocap_partial_copy_warns(tmp_path: Path) -> None:
    make_iemocap(tmp_path, sessions=(1, 2))
    with pytest.warns(UserWarning, match="Session3, Session4, Session5 missing"):
        table = load_iemocap(tmp_path)
    assert set(table["session"]) == {"Session1", "Session2"}


def _rewrite(txt: Path, old: str, new: str) -> None:
    text = txt.read_text()
    assert old in text
    txt.write_text(text.replace(old, new))


def test_iemocap_unreadable_label_lines_are_counted_and_named(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    txt = release / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    _rewrite(txt, "[8.5000 - 10.2500]", "[15.0 -]")  # Ses02F_impro01_M000 (ang)
    _rewrite(txt, "[11.0000 - 12.5000]", "[1e3 - 2]")  # Ses02F_impro01_M001 (exc)
    with pytest.warns(UserWarning) as caught:
        table = load_iemocap(release)
    message = "\n".join(str(w.message) for w in caught)
    assert "2 IEMOCAP label line(s) in 1 file(s) cannot be read and were skipped" in message
    assert f"{txt}: 2 line(s), e.g. line 8: '[15.0 -]" in message
    assert len(table) == 5 * 5 - 2
    assert not table["utterance_id"].isin(["Ses02F_impro01_M000", "Ses02F_impro01_M001"]).any()


def test_iemocap_label_file_with_no_readable_line_is_refused(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    txt = release / "Session4" / "dialog" / "EmoEvaluation" / "Ses04M_script01_1.txt"
    txt.write_text(txt.read_text().replace(" - ", " to "))
    with pytest.raises(HcldError, match=rf"{txt}: none of its 3 label lines can be read \(line 3: "
                       r"'\[1.0000 to 3.5000\].*a label line reads '\[START - END\]"):
        load_iemocap(release)


def test_iemocap_end_before_start_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    txt = release / "Session3" / "dialog" / "EmoEvaluation" / "Ses03M_script01_1.txt"
    _rewrite(txt, "[4.0000 - 5.0000]", "[20.0 - 18.0]")  # Ses03M_script01_1_M000 (hap)
    with pytest.raises(HcldError, match=rf"{txt}, line 8: utterance Ses03M_script01_1_M000 ends "
                       r"\(18 s\) before it starts \(20 s\); fix the times"):
        load_iemocap(release)
    _rewrite(txt, "[20.0 - 18.0]", "[4.0000 - 5.0000]")
    _rewrite(txt, "[5.5000 - 6.0000]", "[6.0 - 5.5]")  # a dropped label (sur): not refused
    assert len(load_iemocap(release)) == 25


def test_a_corpus_without_one_emotion_is_loaded_with_a_warning(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path)
    for txt in release.glob("Session*/dialog/EmoEvaluation/*.txt"):
        txt.write_text(txt.read_text().replace("\tsad\t", "\tfru\t"))
    with pytest.warns(UserWarning, match=rf"the IEMOCAP release {release} has no sad "
                      r"utterances: its emotions are neu \(5\), hap \(10\), ang \(5\), so models "
                      "trained on it tell 3 emotions apart"):
        table = load_corpus("iemocap", root=release)
    assert set(table["emotion"]) == {"neu", "hap", "ang"}
    with pytest.warns(UserWarning, match=r"manifest .*syn/manifest.csv has no neu, sad "
                      r"utterances: its emotions are hap \(1\), ang \(1\)"):
        load_corpus("synthetic", synthetic_dir=tmp_path / "syn", n_utterances=2, seed=0)


def test_a_complete_corpus_loads_without_a_warning(iemocap: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(load_corpus("iemocap", root=iemocap)["emotion"]) == set(EMOTIONS)


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, rows: list[dict[str, str]], make_files: bool = True,
              name: str = "manifest.csv") -> Path:
    csv = tmp_path / name
    if make_files:
        for r in rows:
            if "path" in r and not r.get("_nofile"):
                _wav(tmp_path / r["path"])
    pd.DataFrame([{k: v for k, v in r.items() if k != "_nofile"} for r in rows]).to_csv(
        csv, index=False)
    return csv


def _basic_rows() -> list[dict[str, str]]:
    return [
        dict(path=f"audio/spk{i % 3}/utt{i:02d}.wav", speaker=f"spk{i % 3}",
             emotion=EMOTIONS[i % 4])
        for i in range(12)
    ]


def test_manifest_minimal_columns(tmp_path: Path) -> None:
    csv = _manifest(tmp_path, _basic_rows())
    with pytest.warns(UserWarning, match="no 'session' column: session = speaker, so protocol "
                      "'loso' becomes leave-one-speaker-out"):
        table = load_manifest(csv)
    assert list(table.columns) == ["utterance_id", "path", "speaker", "emotion", "session",
                                   "gender"]
    assert list(table["utterance_id"]) == [f"utt{i:02d}" for i in range(12)]
    assert (table["session"] == table["speaker"]).all()
    assert (table["gender"] == "").all()
    assert table.at[4, "path"] == str(tmp_path / "audio" / "spk1" / "utt04.wav")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])


def test_manifest_full_columns_no_warning(tmp_path: Path) -> None:
    rows = [dict(r, session=f"S{i % 2}", gender="female" if i % 2 else "M",
                 utterance_id=f"id{i}", duration="1.25", split="train")
            for i, r in enumerate(_basic_rows())]
    csv = _manifest(tmp_path, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = load_manifest(csv)
    assert list(table.columns) == COLUMNS + ["split"]
    assert list(table["gender"][:2]) == ["M", "F"]
    assert table["duration"].dtype == float and table["duration"].iloc[0] == 1.25
    assert table["utterance_id"].iloc[3] == "id3"


def test_manifest_label_map_renames_and_drops(tmp_path: Path) -> None:
    labels = ["happy", "excited", "neutral", "fear", "angry", "sad"]
    rows = [dict(path=f"a/{i}.wav", speaker="s", emotion=lab, session="x")
            for i, lab in enumerate(labels)]
    csv = _manifest(tmp_path, rows)
    table = load_manifest(csv, label_map={"happy": "hap", "excited": "hap", "neutral": "neu",
                                          "angry": "ang", "fear": None})
    assert list(table["emotion"]) == ["hap", "hap", "neu", "ang", "sad"]
    assert "3" not in set(table["utterance_id"])


def test_manifest_missing_columns(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    pd.DataFrame({"file": ["a.wav"], "label": ["neu"], "speaker": ["s"]}).to_csv(csv, index=False)
    with pytest.raises(HcldError, match=f"{csv} lacks the column\\(s\\) path, emotion"):
        load_manifest(csv)


@pytest.mark.parametrize("sep, encoding", [
    (";", "utf-8"), ("\t", "utf-8"), ("|", "utf-8"), (",", "utf-8-sig"), (",", "utf-16"),
    ("\t", "utf-16"), (";", "utf-16-le"), (",", "utf-16-be")])
def test_manifest_as_spreadsheets_save_it_is_read_the_same(tmp_path: Path, sep: str,
                                                           encoding: str) -> None:
    """Semicolons (comma-decimal locales), tabs and '|'; a UTF-8 byte-order mark; UTF-16 with a
    byte-order mark (Excel's Unicode text) or without: the same table as the plain CSV."""
    rows = [dict(r, session="S1", duration="1.5") for r in _basic_rows()]
    plain = load_manifest(_manifest(tmp_path, rows))
    other = tmp_path / "other.csv"
    pd.DataFrame(rows).to_csv(other, index=False, sep=sep, encoding=encoding)
    pd.testing.assert_frame_equal(load_manifest(other), plain)


def test_manifest_in_another_encoding_or_layout_says_what_to_fix(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,speaker,emotion\naudio/é.wav,s,neu\n".encode("latin-1"))
    with pytest.raises(HcldError, match=f"manifest {latin} is not UTF-8 or UTF-16 text.*save it "
                       "as UTF-8"):
        load_manifest(latin)
    spaced = tmp_path / "spaced.csv"
    spaced.write_text("path speaker emotion\na.wav s neu\n")
    with pytest.raises(HcldError, match=r"lacks the column\(s\) path, speaker, emotion; its "
                       r"header line has 'path speaker emotion' \(separators tried: comma, "
                       r"semicolon, tab, '\|'\)"):
        load_manifest(spaced)
    named = tmp_path / "named.csv"
    named.write_text("file;label;speaker\na.wav;neu;s\n")
    with pytest.raises(HcldError, match=r"lacks the column\(s\) path, emotion; its header line "
                       r"has 'file', 'label', 'speaker'"):
        load_manifest(named)


def test_manifest_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(HcldError, match="nope.csv does not exist"):
        load_manifest(tmp_path / "nope.csv")


def test_manifest_missing_files_listed_and_capped(tmp_path: Path) -> None:
    rows = _basic_rows()
    for r in rows[:11]:
        r["_nofile"] = "1"
    rows += [dict(path=f"more/x{i}.wav", speaker="s", emotion="neu", _nofile="1")
             for i in range(2)]
    csv = _manifest(tmp_path, rows)
    with pytest.raises(HcldError) as err:
        load_manifest(csv)
    msg = str(err.value)
    assert "13 audio files do not exist" in msg and str(csv) in msg
    assert "line 2: path='" in msg and "audio/spk0/utt00.wav" in msg
    assert "line 11:" in msg and "line 12:" not in msg
    assert "... and 3 more" in msg


def test_manifest_duplicate_files(tmp_path: Path) -> None:
    rows = _basic_rows()
    rows.append(dict(path="audio/spk1/../spk1/utt04.wav", speaker="spk1", emotion="sad"))
    csv = _manifest(tmp_path, rows)
    with pytest.raises(HcldError, match=r"(?s)2 rows point to the same audio file.*line 6: .*"
                       r"utt04.wav.*line 14: .*utt04.wav"):
        load_manifest(csv)


def test_manifest_unknown_emotions(tmp_path: Path) -> None:
    rows = _basic_rows()
    rows[3]["emotion"] = "happy"
    rows[7]["emotion"] = "bored"
    csv = _manifest(tmp_path, rows)
    with pytest.raises(HcldError, match=r"(?s)2 rows have emotions outside neu, hap, ang, sad "
                       r"\(bored, happy\).*line 5: emotion='happy'.*line 9: emotion='bored'"
                       r".*label_map"):
        load_manifest(csv)


def test_manifest_duplicate_stems_without_ids(tmp_path: Path) -> None:
    rows = [dict(path=f"{d}/take1.wav", speaker=d, emotion="neu", session=d) for d in ("a", "b")]
    rows.append(dict(path="c/take2.wav", speaker="c", emotion="sad", session="c"))
    csv = _manifest(tmp_path, rows)
    with pytest.raises(HcldError, match=r"(?s)2 rows share an utterance id \(file stem\).*"
                       r"line 2: utterance_id='take1'.*line 3: .*add a unique utterance_id"):
        load_manifest(csv)
    rows = [dict(r, utterance_id=f"u{i}") for i, r in enumerate(rows)]
    with pytest.warns(UserWarning, match="has no hap, ang utterances"):
        table = load_manifest(_manifest(tmp_path, rows, name="ok.csv"))
    assert list(table["utterance_id"]) == ["u0", "u1", "u2"]


def test_manifest_empty_values_and_bad_gender(tmp_path: Path) -> None:
    rows = _basic_rows()
    rows[2]["speaker"] = ""
    with pytest.raises(HcldError, match=r"(?s)1 rows have an empty 'speaker'.*line 4:"):
        load_manifest(_manifest(tmp_path, rows))
    rows = [dict(r, gender="x" if i == 5 else "F") for i, r in enumerate(_basic_rows())]
    with pytest.raises(HcldError, match=r"(?s)gender other than F/M.*line 7: gender='x'"):
        load_manifest(_manifest(tmp_path, rows, name="g.csv"))


# ----------------------------------------------------------------------------------------------
# load_corpus and re-exports
# ----------------------------------------------------------------------------------------------


def test_load_corpus_dispatches(iemocap: Path, tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(load_corpus("iemocap", root=iemocap), load_iemocap(iemocap))
    csv = _manifest(tmp_path, [dict(r, session="s") for r in _basic_rows()])
    with pytest.warns(UserWarning, match=rf"manifest {csv} has no sad utterances: its emotions "
                      r"are neu \(3\), hap \(3\), ang \(3\), so models trained on it tell 3 "
                      r"emotions apart, not the 4 of neu, hap, ang, sad"):
        table = load_corpus("manifest", manifest=csv, label_map={"sad": None})
    assert "sad" not in set(table["emotion"]) and len(table) == 9
    syn = load_corpus("synthetic", synthetic_dir=tmp_path / "syn", n_utterances=8, seed=1,
                      emotion_strength=0.5)
    assert len(syn) == 8 and (tmp_path / "syn" / "corpus.json").is_file()
    assert list(syn.columns) == COLUMNS


def test_default_synthetic_dir_depends_on_every_knob(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("HCLD_DATA_DIR", str(tmp_path))
    a = data.default_synthetic_dir(0, 1000)
    assert a == tmp_path / "synthetic_n1000_seed0"
    assert data.default_synthetic_dir(0, 1000, emotion_strength=0.2) != a
    assert data.default_synthetic_dir(1, 1000) != a


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(dataset="librispeech"), "unknown dataset 'librispeech'"),
        (dict(dataset="iemocap"), "needs root="),
        (dict(dataset="manifest"), "needs manifest="),
        (dict(dataset="iemocap", root="x", confounding=0.5), "only apply to dataset='synthetic'"),
    ],
)
def test_load_corpus_errors(args: dict[str, object], match: str) -> None:
    with pytest.raises(HcldError, match=match):
        load_corpus(**args)


def test_the_package_names_its_loaders_and_nothing_by_magic() -> None:
    from hcld_lib.data.iemocap import load_iemocap
    from hcld_lib.data.manifest import load_manifest

    assert (data.load_iemocap, data.load_manifest) == (load_iemocap, load_manifest)
    assert not hasattr(data, "__getattr__")  # no lazy re-exports of other modules' names
    with pytest.raises(AttributeError):
        data.load_audio  # noqa: B018 - lives in hcld_lib.data.audio, imported from there
