"""The synthetic corpus: determinism, idempotence, a voice-like signal, emotion cues as stated."""

from __future__ import annotations

import hashlib
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hcld_lib.data import synthetic
from hcld_lib.data.labels import EMOTIONS
from hcld_lib.data.render import render_utterance
from hcld_lib.data.synthetic import plan_corpus, synthesize_corpus
from hcld_lib.data.voice import make_speakers, utterance_factors
from hcld_lib.io import HcldError

N_SMALL = 24


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        sr = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768
    return x, sr


def _frame_pitch(x: np.ndarray, sr: int, fmin: float = 60.0, fmax: float = 450.0,
                 frame: float = 0.04, hop: float = 0.01, threshold: float = 0.6) -> np.ndarray:
    """Autocorrelation F0 (Hz) of the clearly periodic frames of ``x``."""
    n, h = int(frame * sr), int(hop * sr)
    lo, hi = int(sr / fmax), int(sr / fmin)
    rms_all = np.sqrt(np.mean(x**2))
    out = []
    for start in range(0, len(x) - n, h):
        seg = x[start : start + n] * np.hanning(n)
        if np.sqrt(np.mean(seg**2)) < 0.3 * rms_all:
            continue
        ac = np.correlate(seg, seg, "full")[n - 1 :]
        ac = ac / (ac[0] + 1e-12)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > threshold:
            out.append(sr / lag)
    return np.asarray(out)


def _harmonic_count(x: np.ndarray, sr: int, f0: float, floor_db: float = -40.0) -> float:
    """Median over loud 40 ms frames of how many of harmonics 1..15 lie within ``floor_db``."""
    n = int(0.04 * sr)
    freqs = np.fft.rfftfreq(8192, 1 / sr)
    ks = [k for k in range(1, 16) if k * f0 < sr / 2 - 100]
    rms_all = np.sqrt(np.mean(x**2))
    counts = []
    for start in range(0, len(x) - n, 160):
        seg = x[start : start + n] * np.hanning(n)
        if np.sqrt(np.mean(seg**2)) < 0.5 * rms_all:
            continue
        mag = np.abs(np.fft.rfft(seg, 8192))
        amps = np.array([mag[np.abs(freqs - k * f0) < 0.25 * f0].max() for k in ks])
        counts.append(np.sum(20 * np.log10(amps / amps.max() + 1e-12) > floor_db))
    return float(np.median(counts))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("syn") / "corpus"
    return out, synthesize_corpus(out, n_utterances=N_SMALL, seed=3)


def test_table_and_files(corpus: tuple[Path, pd.DataFrame]) -> None:
    out, table = corpus
    assert list(table.columns) == ["utterance_id", "path", "speaker", "emotion", "session",
                                   "gender", "duration"]
    assert len(table) == N_SMALL and table["utterance_id"].is_unique
    assert set(table["emotion"]) <= set(EMOTIONS)
    assert table["speaker"].nunique() == 10 and table["session"].nunique() == 5
    for row in table.itertuples():
        assert Path(row.path).is_absolute() and Path(row.path).is_file()
        assert Path(row.path) == out.absolute() / "wav" / f"{row.utterance_id}.wav"
        assert row.utterance_id.startswith(row.speaker + "_syn_")
        assert row.speaker == f"Ses{int(row.session[7:]):02d}{row.gender}"
        x, sr = _read_wav(row.path)
        assert sr == 16000
        assert len(x) / sr == pytest.approx(row.duration, abs=1e-3)
        assert 1.5 <= row.duration <= 4.0
        assert 0.005 < np.sqrt(np.mean(x**2)) and np.abs(x).max() < 1.0
    manifest = pd.read_csv(out / "manifest.csv")
    assert not manifest["path"].str.startswith("/").any()  # relative paths
    factors = pd.read_csv(out / "factors.csv")
    assert list(factors["utterance_id"]) == list(table["utterance_id"])
    for col in ("f0_mean_hz", "f0_range_st", "contour", "tempo", "energy_db", "tilt_db",
                "breathiness", "jitter", "shimmer", "open_quotient", "vtl_factor", "text"):
        assert factors[col].notna().all(), col


def test_same_seed_identical_bytes(corpus: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    out, _ = corpus
    again = tmp_path / "again"
    synthesize_corpus(again, n_utterances=N_SMALL, seed=3)
    assert _tree_hash(again) == _tree_hash(out)
    other = tmp_path / "other"
    synthesize_corpus(other, n_utterances=N_SMALL, seed=4)
    first = "wav/Ses01F_syn_0001.wav"
    assert _tree_hash(other)[first] != _tree_hash(out)[first]


def test_rendering_processes_do_not_change_the_bytes(corpus: tuple[Path, pd.DataFrame],
                                                      tmp_path: Path) -> None:
    out, _ = corpus
    for workers in (1, 3):
        again = tmp_path / f"workers{workers}"
        synthesize_corpus(again, n_utterances=N_SMALL, seed=3, workers=workers)
        assert _tree_hash(again) == _tree_hash(out)
    with pytest.raises(HcldError, match="workers=0"):
        synthesize_corpus(tmp_path / "none", n_utterances=N_SMALL, seed=3, workers=0)
    assert not (tmp_path / "none").exists()  # refused before anything is written


def test_complete_corpus_is_returned_without_regenerating(
    corpus: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, table = corpus

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a complete corpus")

    monkeypatch.setattr(synthetic, "render_utterance", fail)
    pd.testing.assert_frame_equal(synthesize_corpus(out, n_utterances=N_SMALL, seed=3), table)


def test_other_parameters_in_the_same_folder_raise(corpus: tuple[Path, pd.DataFrame]) -> None:
    out, _ = corpus
    with pytest.raises(HcldError, match=r"(?s)other parameters.*emotion_strength.*another folder"):
        synthesize_corpus(out, n_utterances=N_SMALL, seed=3, emotion_strength=0.2)


def test_foreign_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HcldError, match=str(tmp_path)):
        synthesize_corpus(tmp_path, n_utterances=4)


def test_interrupted_run_resumes_to_the_same_bytes(
    corpus: tuple[Path, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic.render_utterance
    calls = {"n": 0}

    def crash_after_five(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    target = tmp_path / "resumed"
    monkeypatch.setattr(synthetic, "render_utterance", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(target, n_utterances=N_SMALL, seed=3)
    assert not (target / "corpus.json").exists()
    assert len(list((target / "wav").glob("*.wav"))) == 5
    # A different request must not be mixed into the unfinished folder.
    with pytest.raises(HcldError, match="other parameters"):
        synthesize_corpus(target, n_utterances=N_SMALL, seed=9)
    monkeypatch.setattr(synthetic, "render_utterance", real)
    synthesize_corpus(target, n_utterances=N_SMALL, seed=3)
    assert _tree_hash(target) == _tree_hash(corpus[0])


def test_audio_is_voice_like(corpus: tuple[Path, pd.DataFrame]) -> None:
    out, table = corpus
    factors = pd.read_csv(out / "factors.csv").set_index("utterance_id")
    rel_err, n_harmonics = [], []
    for row in table.itertuples():
        x, sr = _read_wav(row.path)
        f0 = _frame_pitch(x, sr)
        assert len(f0) >= 10, row.utterance_id  # clearly periodic stretches
        rel_err.append(np.median(f0) / factors.at[row.utterance_id, "f0_mean_hz"] - 1.0)
        # Not a tone: energy spread over harmonics and formants, not only at the fundamental.
        spec = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / sr)
        assert spec[freqs > 3 * np.median(f0)].sum() > 0.02 * spec.sum()
        assert spec[freqs > 1500].sum() > 0.0005 * spec.sum()
        n_harmonics.append(_harmonic_count(x, sr, float(np.median(f0))))
        # Syllables: the 10 ms energy envelope dips deeply between them, many times.
        env = 10 * np.log10(np.convolve(x**2, np.ones(160) / 160, "valid")[::160] + 1e-12)
        loud = env > env.max() - 12
        assert np.count_nonzero(np.diff(loud.astype(int)) == 1) >= 3
    rel_err = np.abs(np.asarray(rel_err))
    assert np.median(rel_err) < 0.05
    assert np.mean(rel_err < 0.12) >= 0.9
    assert min(n_harmonics) >= 3 and np.median(n_harmonics) >= 6


def test_emotion_factors_follow_the_stated_directions() -> None:
    plan = plan_corpus(1000, seed=0)
    means = plan.groupby(["speaker", "emotion"])[
        ["f0_mean_hz", "f0_range_st", "energy_db", "tempo", "tilt_db", "breathiness"]
    ].mean()
    for spk in plan["speaker"].unique():
        m = means.loc[spk]
        assert m.at["ang", "f0_mean_hz"] > m.at["sad", "f0_mean_hz"]
        assert m.at["hap", "f0_mean_hz"] > m.at["sad", "f0_mean_hz"]
        assert m.at["ang", "energy_db"] > m.at["sad", "energy_db"]
        assert m.at["sad", "tempo"] < m.at["hap", "tempo"]
        assert m.at["hap", "f0_range_st"] > m.at["sad", "f0_range_st"]
        assert m.at["sad", "tilt_db"] > m.at["ang", "tilt_db"]
    contours = pd.crosstab(plan["emotion"], plan["contour"], normalize="index")
    assert contours.at["sad", "flat"] > contours.at["hap", "flat"]
    assert contours.at["hap", "rise-fall"] > contours.at["sad", "rise-fall"]


def test_voices_differ_by_gender() -> None:
    voices = make_speakers(5, seed=0)
    f = [v for v in voices if v.gender == "F"]
    m = [v for v in voices if v.gender == "M"]
    assert min(v.f0_hz for v in f) > max(v.f0_hz for v in m)
    assert np.mean([v.formant_scale for v in f]) > np.mean([v.formant_scale for v in m])
    assert all(v.vtl_factor == pytest.approx(1 / v.formant_scale) for v in voices)


def test_zero_strength_removes_emotion_dependence() -> None:
    voice = make_speakers(1, seed=0)[0]

    def draw(emotion: str, strength: float) -> dict[str, object]:
        f = utterance_factors(voice, emotion, strength, np.random.default_rng(11))
        return {k: v for k, v in f.items() if k != "emotion"}

    assert all(draw(e, 0.0) == draw("neu", 0.0) for e in EMOTIONS)
    assert draw("sad", 0.6) != draw("neu", 0.6)

    plan = plan_corpus(800, seed=1, emotion_strength=0.0)
    by_emotion = plan.groupby("emotion")[["f0_shift_st", "energy_db", "tempo"]].mean()
    spread = by_emotion.max() - by_emotion.min()
    assert spread["f0_shift_st"] < 0.5 and spread["energy_db"] < 1.0 and spread["tempo"] < 0.05
    strong = plan_corpus(800, seed=1, emotion_strength=1.0)
    assert np.ptp(strong.groupby("emotion")["f0_shift_st"].mean()) > 3.0


def test_confounding_controls_the_speaker_emotion_spread() -> None:
    even = pd.crosstab(plan_corpus(400, seed=0, confounding=0.0)["speaker"],
                       plan_corpus(400, seed=0, confounding=0.0)["emotion"])
    assert (even.max(axis=1) - even.min(axis=1)).max() <= 1
    skewed = pd.crosstab(*[plan_corpus(400, seed=0, confounding=1.0)[c]
                           for c in ("speaker", "emotion")])
    assert (skewed.max(axis=1) / skewed.sum(axis=1)).mean() > 0.45


def test_render_is_deterministic_and_finite() -> None:
    rec = plan_corpus(10, seed=2).to_dict("records")[0]
    a = render_utterance(rec, 16000, np.random.default_rng(1))
    b = render_utterance(rec, 16000, np.random.default_rng(1))
    assert a.dtype == np.float32 and np.array_equal(a, b) and np.isfinite(a).all()
    assert len(a) == round(rec["duration"] * 16000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(emotion_strength=1.5), "emotion_strength"),
        (dict(confounding=-0.1), "confounding"),
        (dict(n_utterances=0), "n_utterances"),
        (dict(min_seconds=3.0, max_seconds=2.0), "min_seconds"),
    ],
)
def test_bad_knobs_raise(tmp_path: Path, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(HcldError, match=match):
        synthesize_corpus(tmp_path / "c", **kwargs)


def test_damaged_corpus_says_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "c"
    with pytest.warns(UserWarning, match="has no neu utterances"):  # 4 utterances, 2 speakers
        synthesize_corpus(out, n_utterances=4, seed=0)
    next((out / "wav").glob("*.wav")).unlink()
    with pytest.raises(HcldError, match=r"(?s)damaged synthetic corpus.*delete the folder"):
        synthesize_corpus(out, n_utterances=4, seed=0)
