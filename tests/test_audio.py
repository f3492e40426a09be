"""Tests for hcld_lib.audio: mono mix, resampling, trim/pad, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from hcld_lib.data.audio import audio_num_samples, load_audio, resample
from hcld_lib.io import HcldError


def _tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def test_stereo_is_mixed_resampled_and_padded(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, _tone(0.5, 22050, channels=2), 22050, subtype="FLOAT")
    wave, valid = load_audio(path, sample_rate=16000, max_seconds=1.0)
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    assert valid == 8000  # ceil(11025 * 16000 / 22050)
    assert np.all(wave[valid:] == 0)
    # channel mean of (x, 2x)/2 is 0.75 x; away from the edges it matches the tone at 16 kHz
    ref = 0.75 * _tone(0.5, 16000)
    np.testing.assert_allclose(wave[400:7600], ref[400:7600], atol=2e-3)


def test_trim_keeps_the_first_samples_exactly(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 32000).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    wave, valid = load_audio(path, sample_rate=16000, max_seconds=1.5)
    assert wave.shape == (24000,) and valid == 24000
    np.testing.assert_array_equal(wave, x[:24000])
    full, n = load_audio(path, sample_rate=16000, max_seconds=None)
    assert n == 32000 and full.shape == (32000,)
    np.testing.assert_array_equal(full, x)


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_header_length_matches_loaded_length(tmp_path, sr):
    path = tmp_path / f"a{sr}.wav"
    sf.write(path, _tone(0.37, sr), sr)
    _, valid = load_audio(path, 16000, max_seconds=None)
    assert audio_num_samples(path, 16000) == valid
    assert audio_num_samples(path, 16000, max_seconds=0.1) == min(valid, 1600)


def test_resampling_is_deterministic_and_band_limited():
    x = _tone(1.0, 44100, freq=1000.0)
    a, b = resample(x, 44100, 16000), resample(x, 44100, 16000)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[200:-200], _tone(1.0, 16000, freq=1000.0)[200:-200], atol=1e-3)
    # 9 kHz lies above the new 8 kHz Nyquist: it must be filtered out, not aliased to 7 kHz
    alias = resample(_tone(1.0, 44100, freq=9000.0), 44100, 16000)
    assert np.abs(alias[500:-500]).max() < 1e-2


def test_missing_file_error_names_it(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(HcldError, match="nowhere.wav.*path"):
        load_audio(path)
    with pytest.raises(HcldError, match="nowhere.wav"):
        audio_num_samples(path)


def test_non_audio_file_error_says_what_to_do(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(HcldError, match="notes.wav.*convert"):
        load_audio(path)
    with pytest.raises(HcldError, match="notes.wav"):
        audio_num_samples(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(HcldError, match="empty.wav has no samples"):
        load_audio(path)
    with pytest.raises(HcldError, match="empty.wav has no samples"):
        audio_num_samples(path)


def test_bad_max_seconds(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(0.1, 16000), 16000)
    with pytest.raises(HcldError, match="max_seconds"):
        load_audio(path, max_seconds=0)


def _float_wav(path, samples, sr=16000):
    sf.write(path, np.asarray(samples, dtype=np.float32), sr, subtype="FLOAT")
    return path


def test_non_finite_samples_are_refused_naming_the_file(tmp_path):
    x = _tone(0.2, 16000)
    x[100], x[2000] = np.nan, np.inf
    path = _float_wav(tmp_path / "nan.wav", x)
    with pytest.raises(HcldError, match=r"nan.wav contains 2 NaN or infinite samples \(the first "
                       r"at sample 100\): it is damaged"):
        load_audio(path)


@pytest.mark.parametrize("peak", [1e30, 32767.0, 100.5])
def test_absurd_amplitudes_are_refused_naming_the_file(tmp_path, peak):
    """1e30: garbage that overflows an encoder into NaN; 32767: integer values written as float."""
    path = _float_wav(tmp_path / "loud.wav", peak * _tone(0.2, 16000) / 0.5)
    with pytest.raises(HcldError) as err:
        load_audio(path)
    message = str(err.value)
    assert message.startswith(f"audio file {path} has samples up to {peak:.3g} in absolute value")
    assert "within [-1, 1] (hcld accepts up to 100)" in message and "re-export" in message


@pytest.mark.parametrize("peak", [0.99, 1.6, 100.0])
def test_float_audio_with_headroom_is_read_as_it_is(tmp_path, peak):
    x = peak * _tone(0.2, 16000) / 0.5
    wave, valid = load_audio(_float_wav(tmp_path / "hot.wav", x), max_seconds=None)
    np.testing.assert_array_equal(wave, x.astype(np.float32))


def test_a_file_of_huge_samples_never_reaches_the_feature_cache(tmp_path):
    import pandas as pd

    from hcld_lib.features.extract import extract_features

    good = _float_wav(tmp_path / "good.wav", _tone(0.5, 16000))
    huge = _float_wav(tmp_path / "huge.wav", np.full(8000, 1e30))
    table = pd.DataFrame({"utterance_id": ["good", "huge"], "path": [str(good), str(huge)],
                          "speaker": ["s", "s"], "emotion": ["neu", "sad"]})
    with pytest.raises(HcldError, match=f"audio file {huge} has samples up to 1e\\+30"):
        extract_features(table, "fbank", tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*/meta.json"))
