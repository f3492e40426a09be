"""Tests for hcld_lib.features: backbones, the resumable cache, and the train-only normaliser.

All offline: HuBERT-base is built with random weights and saved where torch hub keeps the real
checkpoint, then loaded through the same path a user's checkpoint takes; the Hugging Face
backbone is a tiny random HubertModel saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers import FakeHub, tiny_hubert

from hcld_lib.data.audio import load_audio
from hcld_lib.features import ssl
from hcld_lib.features.backbone import Backbone, conv_frame_count
from hcld_lib.features.cache import open_cache
from hcld_lib.features.extract import extract_features
from hcld_lib.features.fbank import FbankBackbone
from hcld_lib.features.normalizer import FeatureNormalizer
from hcld_lib.features.ssl import TorchaudioHubertBackbone, hubert_checkpoint_url
from hcld_lib.io import HcldError

HUBERT_FILE = "hubert_fairseq_base_ls960.pth"


def _write_clip(path: Path, seconds: float, sr: int = 16000, freq: float = 220.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    sf.write(path, x.astype(np.float32), sr)
    return path


def _table(folder: Path, seconds: list[float], prefix: str = "u") -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, s in enumerate(seconds):
        p = _write_clip(folder / f"{prefix}{i}.wav", s, freq=150.0 + 40 * i, seed=i)
        rows.append(
            dict(
                utterance_id=f"{prefix}{i}",
                path=str(p),
                speaker=f"spk{i % 2}",
                emotion=("neu", "hap", "ang", "sad")[i % 4],
                session="1",
                gender="FM"[i % 2],
            )
        )
    return pd.DataFrame(rows)


def _fbank_frames(n_samples: int) -> int:
    return 1 + (max(n_samples, 400) - 400) // 320


# --------------------------------------------------------------------------- fbank + cache


def test_conv_frame_count_formula():
    assert conv_frame_count(120000) == 374  # 7.5 s at 16 kHz, as in the paper
    assert conv_frame_count(400) == 1 and conv_frame_count(399) == 0
    assert conv_frame_count(16000) == 49


def test_fbank_shapes_lengths_and_layout(tmp_path):
    seconds = [0.3, 1.0, 7.5, 9.0, 0.01]
    table = _table(tmp_path / "wav", seconds)
    cache = extract_features(table, "fbank", tmp_path / "cache", progress=False, batch_size=2)
    assert cache.array.shape == (5, 374, 80) and cache.array.dtype == np.float16
    assert cache.path.parent == tmp_path / "cache" and cache.path.name.startswith("fbank-")
    expected = [_fbank_frames(min(round(s * 16000), 120000)) for s in seconds]
    assert cache.lengths.tolist() == expected
    assert cache.feature_dim == 80 and cache.max_frames == 374 and cache.n_layers == 1
    assert len(cache) == 5 and cache.ids == table["utterance_id"].tolist()
    x = cache["u1"]
    assert x.dtype == np.float32 and x.shape == (374, 80)
    assert np.all(x[cache.length("u1") :] == 0) and np.all(np.isfinite(x))
    assert np.abs(x[: cache.length("u1")]).sum() > 0
    assert cache.row("u3") == 3
    with pytest.raises(KeyError, match="nope"):
        cache.row("nope")
    pd.testing.assert_frame_equal(cache.table[list(table.columns)], table)
    for name in ("features.npy", "index.csv", "table.csv", "meta.json"):
        assert (cache.path / name).is_file()
    assert not (cache.path / "progress.npz").exists()
    meta = json.loads((cache.path / "meta.json").read_text())
    assert meta["complete"] and meta["shape"] == [5, 374, 80] and meta["backbone"] == "fbank"
    reopened = open_cache(cache.path, verify=True)
    np.testing.assert_array_equal(reopened.array, cache.array)


def test_fbank_matches_kaldi_fbank():
    from torchaudio.compliance import kaldi

    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (400, 5000, 48000)]
    out, frames = FbankBackbone().forward(waves, (0,))
    assert out.shape == (3, 1, 149, 80) and frames.tolist() == [1, 15, 149]
    for i, w in enumerate(waves):
        ref = kaldi.fbank(
            torch.from_numpy(w)[None] * 32768.0,
            num_mel_bins=80,
            frame_length=25.0,
            frame_shift=20.0,
            dither=0.0,
            sample_frequency=16000.0,
        )
        np.testing.assert_allclose(out[i, 0, : frames[i]].numpy(), ref.numpy(), atol=1e-3)


def test_fbank_full_length_when_max_seconds_is_none(tmp_path):
    table = _table(tmp_path / "wav", [0.5, 2.0])
    cache = extract_features(table, "fbank", tmp_path / "c", max_seconds=None, progress=False)
    assert cache.max_frames == _fbank_frames(32000) == cache.lengths[1]
    assert cache.lengths[0] == _fbank_frames(8000)


def test_fbank_padding_invariance(tmp_path):
    a = _table(tmp_path / "a", [1.3], prefix="a")
    long_mate = _table(tmp_path / "l", [6.0], prefix="l")
    short_mate = _table(tmp_path / "s", [0.2], prefix="s")
    results = []
    for i, mates in enumerate([None, long_mate, short_mate]):
        table = a if mates is None else pd.concat([mates, a], ignore_index=True)
        cache = extract_features(table, "fbank", tmp_path / f"c{i}", batch_size=2, progress=False)
        results.append((cache["a0"], cache.length("a0")))
    for x, n in results[1:]:
        assert n == results[0][1]
        # equal up to a float16 rounding step, should a BLAS pick another kernel for another shape
        np.testing.assert_allclose(x, results[0][0], rtol=2e-3, atol=1e-6)


class _Counter:
    """Wraps a backbone's forward: counts utterances encoded and can fail after k batches."""

    def __init__(self, forward, fail_after: int | None = None):
        self.forward, self.fail_after, self.batches, self.utterances = forward, fail_after, 0, 0

    def __call__(self, bb, waves, layers):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.batches += 1
        self.utterances += len(waves)
        return self.forward(bb, waves, layers)

    def method(self):
        """A plain function, so that it binds like a method when set on the class."""
        return lambda bb, waves, layers: self(bb, waves, layers)


def test_resume_after_crash_computes_only_missing_rows(tmp_path, monkeypatch):
    table = _table(tmp_path / "wav", [0.4 + 0.3 * i for i in range(10)])
    reference = extract_features(table, "fbank", tmp_path / "ref", batch_size=2, progress=False)

    original = FbankBackbone.forward
    crash = _Counter(original, fail_after=2)
    monkeypatch.setattr(FbankBackbone, "forward", crash.method())
    with pytest.raises(KeyboardInterrupt):
        extract_features(table, "fbank", tmp_path / "run", batch_size=2, progress=False)
    folder = next(p for p in (tmp_path / "run").iterdir() if p.is_dir())
    assert folder.name == reference.path.name  # same inputs, same key
    with pytest.raises(HcldError, match="incomplete.*re-run extract_features"):
        open_cache(folder)

    resume = _Counter(original)
    monkeypatch.setattr(FbankBackbone, "forward", resume.method())
    cache = extract_features(table, "fbank", tmp_path / "run", batch_size=2, progress=False)
    assert resume.utterances == 10 - 2 * 2
    np.testing.assert_array_equal(cache.array, reference.array)
    np.testing.assert_array_equal(cache.lengths, reference.lengths)

    again = _Counter(original)
    monkeypatch.setattr(FbankBackbone, "forward", again.method())
    assert extract_features(table, "fbank", tmp_path / "run", progress=False).path == cache.path
    assert again.utterances == 0  # a complete cache is reused, not recomputed


def test_cache_key_changes_with_corpus_and_parameters(tmp_path):
    table = _table(tmp_path / "wav", [0.5, 0.8, 1.1])
    base = extract_features(table, "fbank", tmp_path / "c", progress=False).path
    assert extract_features(table, "fbank", tmp_path / "c", progress=False).path == base
    assert (
        extract_features(table, "fbank", tmp_path / "c", max_seconds=5.0, progress=False).path
        != base
    )
    relabelled = table.assign(emotion=["sad", "sad", "sad"])
    assert extract_features(relabelled, "fbank", tmp_path / "c", progress=False).path != base
    _write_clip(Path(table["path"][1]), 0.9, freq=500.0, seed=9)  # the audio changes
    changed = extract_features(table, "fbank", tmp_path / "c", progress=False)
    assert changed.path != base
    assert changed.lengths[1] == _fbank_frames(14400)
    # four caches, each beside the hidden lock file its extraction held
    assert len([p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]) == 4


def test_corrupt_cache_is_refused_then_rebuilt(tmp_path):
    table = _table(tmp_path / "wav", [0.5, 0.9])
    cache = extract_features(table, "fbank", tmp_path / "c", progress=False)
    good = np.array(cache.array)
    folder = cache.path
    del cache
    feat = folder / "features.npy"
    size = feat.stat().st_size
    with open(feat, "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(HcldError, match="truncated.*Delete the cache folder"):
        open_cache(folder)
    with pytest.warns(UserWarning, match="Rebuilding"):
        rebuilt = extract_features(table, "fbank", tmp_path / "c", progress=False)
    np.testing.assert_array_equal(rebuilt.array, good)

    (folder / "index.csv").unlink()
    with pytest.raises(HcldError, match="index.csv is missing"):
        open_cache(folder)


def test_changed_bytes_fail_verification(tmp_path):
    table = _table(tmp_path / "wav", [0.5, 0.9])
    folder = extract_features(table, "fbank", tmp_path / "c", progress=False).path
    arr = np.load(folder / "features.npy", mmap_mode="r+")
    arr[1, 3, 5] += 1
    arr.flush()
    del arr
    open_cache(folder)  # structure is intact
    with pytest.raises(HcldError, match="checksum.*u1"):
        open_cache(folder, verify=True)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(HcldError, match=r"feature cache file .*meta.json is not valid JSON.*"
                       r"delete the cache folder .* and re-extract"):
        open_cache(folder)


def _damage_row(folder: Path, row: int, how: str) -> None:
    """Change one row of features.npy behind the cache's back: zeros, or garbled bytes."""
    arr = np.load(folder / "features.npy", mmap_mode="r+")
    if how == "zeros":
        arr[row] = 0
    else:  # random bytes, NaN and infinities among them
        raw = np.random.default_rng(row).integers(0, 2**16, arr[row].size, dtype=np.uint16)
        arr[row] = raw.view(np.float16).reshape(arr[row].shape)
    arr.flush()
    del arr


@pytest.mark.parametrize("how", ["zeros", "garbled"])
def test_a_changed_row_is_named_by_verify_and_extracted_again(tmp_path, monkeypatch, how):
    table = _table(tmp_path / "wav", [0.5, 0.9, 0.7, 1.2])
    reference = extract_features(table, "fbank", tmp_path / "ref", progress=False)
    good = np.array(reference.array)
    cache = extract_features(table, "fbank", tmp_path / "c", progress=False)
    folder = cache.path
    _damage_row(folder, 2, how)
    cache.verify([0, 1, 3])  # the rows a fold would use, all intact
    cache.verify(["u0", "u3"])
    with pytest.raises(HcldError) as err:
        cache.verify()
    message = str(err.value)
    assert message.startswith(f"feature cache {folder} is corrupted: 1 of the 4 rows checked")
    assert "u2 (row 2)" in message and "delete it and re-extract" in message
    with pytest.raises(HcldError, match=r"1 of the 2 rows checked .*u2 \(row 2\)"):
        cache.verify(np.array([3, 2]))
    assert cache.bad_rows().tolist() == [2]
    with pytest.raises(HcldError, match="rows outside 0..3"):
        cache.verify([4])

    counter = _Counter(FbankBackbone.forward)
    monkeypatch.setattr(FbankBackbone, "forward", counter.method())
    with pytest.warns(UserWarning, match=r"1 rows no longer match their checksum \(u2\): "
                      "extracting them again"):
        repaired = extract_features(table, "fbank", tmp_path / "c", progress=False)
    assert repaired.path == folder and counter.utterances == 1  # only the changed row
    np.testing.assert_array_equal(repaired.array, good)
    repaired.verify()


def test_verify_command_checks_caches_from_the_shell(tmp_path, capsys):
    import subprocess
    import sys

    from hcld_lib.features.__main__ import main

    table = _table(tmp_path / "wav", [0.5, 0.9])
    folder = extract_features(table, "fbank", tmp_path / "cache", progress=False).path
    other = extract_features(table, "fbank", tmp_path / "cache", max_seconds=2.0,
                             progress=False).path
    assert main(["verify", str(folder)]) == 0
    assert capsys.readouterr().out.startswith(f"OK {folder}: 2 rows")
    _damage_row(other, 1, "garbled")
    assert main(["verify", str(tmp_path / "cache")]) == 1  # a folder of caches: each checked
    out, err = capsys.readouterr()
    assert f"OK {folder}: 2 rows" in out and f"FAILED {other}: feature cache {other} is " \
        "corrupted" in err and "u1 (row 1)" in err
    assert main(["verify", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    shell = subprocess.run([sys.executable, "-m", "hcld_lib.features", "verify", str(other)],
                           capture_output=True, text=True, timeout=300)
    assert shell.returncode == 1 and "delete it and re-extract" in shell.stderr
    shell = subprocess.run([sys.executable, "-m", "hcld_lib.features", "verify", str(folder)],
                           capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0 and shell.stdout.startswith(f"OK {folder}")


def test_non_finite_features_are_refused_naming_the_file_and_backbone(tmp_path, monkeypatch):
    table = _table(tmp_path / "wav", [0.5, 0.9, 0.7])
    original = FbankBackbone.forward

    def overflowing(bb, waves, layers):  # the clip of 0.9 s comes out as infinities
        feats, frames = original(bb, waves, layers)
        feats = feats.clone()
        for j, w in enumerate(waves):
            if len(w) == 14400:
                feats[j, :, 2] = float("inf")
        return feats, frames

    monkeypatch.setattr(FbankBackbone, "forward", overflowing)
    with pytest.raises(HcldError) as err:
        extract_features(table, "fbank", tmp_path / "c", batch_size=1, progress=False)
    message = str(err.value)
    assert f"the fbank backbone gave NaN or infinite features for {table['path'][1]}" in message
    assert "(utterance u1)" in message and "not cached" in message
    folder = next(p for p in (tmp_path / "c").iterdir() if p.is_dir())
    assert not (folder / "meta.json").exists()  # never a complete cache
    with np.load(folder / "progress.npz") as progress:
        assert not progress["done"][1]
    monkeypatch.setattr(FbankBackbone, "forward", original)
    resumed = extract_features(table, "fbank", tmp_path / "c", batch_size=1, progress=False)
    assert np.isfinite(resumed.array).all()


def test_bad_inputs_are_reported(tmp_path):
    table = _table(tmp_path / "wav", [0.5])
    with pytest.raises(HcldError, match="unknown backbone"):
        extract_features(table, "mfcc", tmp_path / "c")
    with pytest.raises(HcldError, match="unique"):
        extract_features(pd.concat([table, table]), "fbank", tmp_path / "c")
    with pytest.raises(HcldError, match="out of range"):
        extract_features(table, "fbank", tmp_path / "c", layer=3)
    bad = table.assign(path=[str(tmp_path / "gone.wav")])
    with pytest.raises(HcldError, match="gone.wav"):
        extract_features(bad, "fbank", tmp_path / "c")
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(HcldError, match=r"feature cache folder \(cache_dir\) .*file is a file"):
        extract_features(table, "fbank", tmp_path / "file", progress=False)


def test_normalizer_uses_only_the_given_valid_frames(tmp_path):
    table = _table(tmp_path / "wav", [0.6, 1.4, 2.0, 0.9])
    cache = extract_features(table, "fbank", tmp_path / "c", progress=False)
    rows = [3, 1]
    norm = FeatureNormalizer().fit(cache, rows)
    frames = np.concatenate(
        [np.asarray(cache.array[r, : cache.lengths[r]], dtype=np.float64) for r in rows]
    )
    np.testing.assert_allclose(norm.mean, frames.mean(0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(norm.std, frames.std(0), rtol=1e-4, atol=1e-4)
    assert norm.mean.shape == (80,) and norm.mean.dtype == np.float32
    other = FeatureNormalizer().fit(cache, [0, 2])
    assert not np.allclose(other.mean, norm.mean)

    x = cache.array[:2].astype(np.float32)
    out = norm.transform(x, lengths=cache.lengths[:2])
    assert np.all(out[0, cache.lengths[0] :] == 0)
    valid = out[1, : cache.lengths[1]]
    np.testing.assert_allclose(valid, (x[1, : cache.lengths[1]] - norm.mean) / norm.std, rtol=1e-5)
    as_torch = norm.transform(torch.from_numpy(x), lengths=torch.from_numpy(cache.lengths[:2]))
    np.testing.assert_allclose(as_torch.numpy(), out, rtol=1e-5, atol=1e-5)
    restored = FeatureNormalizer.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored.transform(x), norm.transform(x))
    with pytest.raises(HcldError, match="at least one row"):
        FeatureNormalizer().fit(cache, [])
    with pytest.raises(HcldError, match="not fitted"):
        FeatureNormalizer().transform(x)


# --------------------------------------------------------------------------- torchaudio HuBERT


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a random-weight HuBERT-base checkpoint."""
    import torchaudio

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints" / HUBERT_FILE
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchaudio.models.hubert_base().state_dict(), ckpt)
    return home


def test_missing_hubert_checkpoint_offline_names_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HCLD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    table = _table(tmp_path / "wav", [0.5])
    expected_path = tmp_path / "empty_home" / "hub" / "checkpoints" / HUBERT_FILE
    with pytest.raises(HcldError) as err:
        extract_features(table, "torchaudio:hubert_base", tmp_path / "c", progress=False)
    message = str(err.value)
    assert str(expected_path) in message
    url = "https://download.pytorch.org/torchaudio/models/hubert_fairseq_base_ls960.pth"
    assert url in message and hubert_checkpoint_url() == url
    with pytest.raises(HcldError, match="does not exist"):
        extract_features(table, "torchaudio:hubert_base", tmp_path / "c", checkpoint=tmp_path / "x")


def test_hubert_downloads_into_the_torch_hub_cache_when_online(tmp_path, monkeypatch):
    """Online (no offline flag), an absent checkpoint is fetched once from the URL into the torch
    hub cache; the URL here is a local file, so nothing touches the network."""
    source = tmp_path / "server" / HUBERT_FILE
    source.parent.mkdir()
    source.write_bytes(b"weights" * 1000)
    monkeypatch.setattr(ssl, "hubert_checkpoint_url", lambda: source.as_uri())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HCLD_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    path = TorchaudioHubertBackbone().checkpoint_file()
    assert path == tmp_path / "home" / "hub" / "checkpoints" / HUBERT_FILE
    assert path.read_bytes() == source.read_bytes()
    source.unlink()  # the second call reads the cache, it does not download again
    assert TorchaudioHubertBackbone().checkpoint_file() == path
    # an explicit offline=True, or an unreachable URL: the error names the path to fill
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "other"))
    with pytest.raises(HcldError, match="downloads are off.*Put the file at"):
        TorchaudioHubertBackbone(offline=True).checkpoint_file()
    with pytest.raises(HcldError, match=r"download from file:.* failed.*Put the file at"):
        TorchaudioHubertBackbone().checkpoint_file()
    assert not (tmp_path / "other" / "hub" / "checkpoints" / HUBERT_FILE).exists()


def test_damaged_hubert_checkpoint_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints" / HUBERT_FILE
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00" * 1000)
    table = _table(tmp_path / "wav", [0.5])
    with pytest.raises(HcldError, match="cannot read the HuBERT-base checkpoint.*delete it"):
        extract_features(table, "torchaudio:hubert_base", tmp_path / "c", progress=False)


def test_hubert_base_from_torch_hub_cache(tmp_path, monkeypatch, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    seconds = [0.6, 1.1, 8.0]
    table = _table(tmp_path / "wav", seconds)
    hub_file = torch_home / "hub" / "checkpoints" / HUBERT_FILE
    # batches, longest first: [8.0 s, 1.1 s] (the 1.1 s clip padded to 7.5 s), then [0.6 s]
    kw = dict(batch_size=2, progress=False)
    cache = extract_features(table, "torchaudio:hubert_base", tmp_path / "c", **kw)
    assert cache.array.shape == (3, 374, 768)
    valid = [min(round(s * 16000), 120000) for s in seconds]
    assert cache.lengths.tolist() == [conv_frame_count(n) for n in valid] == [29, 54, 374]
    assert cache.meta["layers"] == [12] and cache.meta["checkpoint"] == str(hub_file)
    x = cache["u1"]
    assert np.all(x[54:] == 0) and np.all(np.isfinite(x)) and np.abs(x[:54]).mean() > 0.01

    # the same clip alone (no batch-mates, no padding): the same features; all 13 hidden states
    alone = extract_features(
        table.iloc[[1]], "torchaudio:hubert_base", tmp_path / "c", layer="all", progress=False
    )
    assert alone.array.shape == (1, 13, 374, 768) and alone.n_layers == 13
    np.testing.assert_allclose(alone["u1"][12], x, atol=2e-2, rtol=1e-2)
    assert not np.allclose(alone["u1"][4], x, atol=2e-2)

    # the same bytes given as an explicit path, and layer 12 == -1 == "last": the same cache
    for layer in (12, -1):
        same = extract_features(
            table,
            "torchaudio:hubert_base",
            tmp_path / "c",
            layer=layer,
            checkpoint=hub_file,
            **kw,
        )
        assert same.path == cache.path
    # other weights: a new cache, never the stale one
    state = torch.load(hub_file, weights_only=True)
    state["encoder.transformer.layers.11.final_layer_norm.bias"] += 1.0
    other = tmp_path / "finetuned.pth"
    torch.save(state, other)
    del state
    retrained = extract_features(
        table.iloc[[1]], "torchaudio:hubert_base", tmp_path / "c", checkpoint=other, progress=False
    )
    assert retrained.path not in (cache.path, alone.path)
    np.testing.assert_allclose(retrained["u1"][:54], x[:54] + 1.0, atol=2e-2, rtol=1e-2)


# --------------------------------------------------------------------------- Hugging Face


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_hf_model_from_local_folder_offline(tmp_path, monkeypatch, norm):
    from transformers import AutoModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny_hubert(tmp_path / f"tiny-{norm}", norm)
    seconds = [0.7, 1.3, 2.0]
    table = _table(tmp_path / "wav", seconds)
    spec = f"hf:{folder}"
    cache = extract_features(
        table, spec, tmp_path / "c", max_seconds=1.5, batch_size=3, progress=False
    )
    assert cache.path.name.startswith(f"hf-tiny-{norm}-")
    assert cache.array.shape == (3, conv_frame_count(24000), 32)
    valid = [min(round(s * 16000), 24000) for s in seconds]
    assert cache.lengths.tolist() == [conv_frame_count(n) for n in valid]
    every = extract_features(
        table, spec, tmp_path / "c", max_seconds=1.5, layer="all", progress=False
    )
    assert every.array.shape == (3, 3, 74, 32)
    np.testing.assert_array_equal(every.array[:, 2], cache.array)

    # the longest clip has no padding in its batch: it equals the bare model on its own samples
    model = AutoModel.from_pretrained(folder).eval()
    wave, n = load_audio(table["path"][2], max_seconds=1.5)
    wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)  # do_normalize
    with torch.no_grad():
        ref = model(torch.from_numpy(wave)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(cache["u2"][: cache.lengths[2]], ref, atol=1e-2, rtol=1e-2)

    if norm == "layer":  # attention mask: the short clip does not depend on its batch-mates
        alone = extract_features(
            table.iloc[[0]], spec, tmp_path / "alone", max_seconds=1.5, progress=False
        )
        np.testing.assert_allclose(alone["u0"], cache["u0"], atol=1e-2, rtol=1e-2)

    # new weights in the same folder: a new cache, never the stale one
    tiny_hubert(folder, norm, seed=1)
    assert (
        extract_features(table, spec, tmp_path / "c", max_seconds=1.5, progress=False).path
        != cache.path
    )


def test_hf_missing_model_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    table = _table(tmp_path / "wav", [0.5])
    with pytest.raises(
        HcldError, match=r"(?s)facebook/not-a-cached-model.*local files only.*hf download"
    ):
        extract_features(table, "hf:facebook/not-a-cached-model", tmp_path / "c", progress=False)
    with pytest.raises(HcldError, match="does not exist"):
        extract_features(table, f"hf:{tmp_path / 'no_such_folder'}", tmp_path / "c", progress=False)


def test_hf_hub_name_downloads_into_the_hf_cache_when_online_and_is_refused_offline(
        tmp_path, monkeypatch):
    """Online, ``hf:<owner>/<name>`` is fetched by transformers' own downloader into the Hugging
    Face cache (a fake Hub here, filling the real cache layout) and extracts the same features as
    the same model given as a folder; offline, the same name is refused with the advice."""
    from hcld_lib import runtime

    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tiny_hubert(tmp_path / "tiny", "layer")
    hub = FakeHub("someone/tiny-hubert", folder).install(monkeypatch)
    table = _table(tmp_path / "wav", [0.7, 1.2])
    online = extract_features(table, "hf:someone/tiny-hubert", tmp_path / "c", progress=False)
    assert hub.calls and all(local is False for _, _, local in hub.calls)
    assert (tmp_path / "hub" / "models--someone--tiny-hubert" / "snapshots").is_dir()
    local = extract_features(table, f"hf:{folder}", tmp_path / "c", progress=False)
    np.testing.assert_array_equal(online.array, local.array)

    hub.calls.clear()
    with pytest.raises(HcldError, match="local files only"):
        ssl.HFBackbone("someone/not-downloaded", offline=True)
    assert all(local is True for _, _, local in hub.calls)  # never asked the Hub to download


# --------------------------------------------------------------------------- plugged-in backbones


class ProjectedFbank(Backbone):
    """A user's frozen encoder: log-mel frames through a fixed random projection (16-d), built
    outside the package; ``seed`` decides its weights, so it is its identity."""

    def __init__(self, seed: int = 0) -> None:
        self.spec, self.sample_rate = "projected-fbank", 16000
        self.num_layers, self.feature_dim = 1, 16
        self.fbank = FbankBackbone()
        self.min_samples = self.fbank.min_samples
        self.seed = seed
        self.weight = torch.randn(80, 16, generator=torch.Generator().manual_seed(seed)) / 9.0

    def identity(self) -> dict:
        return {"type": "projected-fbank", "seed": self.seed}

    def frame_count(self, n_samples: int) -> int:
        return self.fbank.frame_count(n_samples)

    def load(self, device: torch.device) -> None:
        self.fbank.load(device)

    def forward(self, waves, layers):
        feats, frames = self.fbank.forward(waves, (0,))
        return feats @ self.weight, frames


def test_plugged_in_backbone_goes_through_the_cache_and_trains(tmp_path):
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.registry import register_backbone, unregister_backbone
    from hcld_lib.training.config import RunConfig
    from hcld_lib.training.run import train_run

    table = synthesize_corpus(tmp_path / "corpus", n_utterances=60, seed=0)
    cache = extract_features(table, ProjectedFbank(0), tmp_path / "c", max_seconds=2.0,
                             progress=False)
    assert cache.array.shape == (60, 99, 16) and cache.path.name.startswith("projected-fbank-")
    assert cache.meta["backbone"] == "projected-fbank"
    assert cache.meta["key_parts"]["identity"] == {"type": "projected-fbank", "seed": 0}
    assert cache.meta["key_parts"]["class"] == f"{__name__}.ProjectedFbank"
    fbank = extract_features(table, "fbank", tmp_path / "c", max_seconds=2.0, progress=False)
    n = fbank.lengths[0]
    expected = (torch.from_numpy(fbank[fbank.ids[0]][:n]) @ ProjectedFbank(0).weight).numpy()
    np.testing.assert_allclose(cache.array[0, :n], expected, atol=2e-2, rtol=1e-2)
    # other weights (identity): another cache; a registered name for the same: the same cache
    assert extract_features(table, ProjectedFbank(1), tmp_path / "c", max_seconds=2.0,
                            progress=False).path != cache.path
    register_backbone("my-projection", lambda: ProjectedFbank(0))
    try:
        same = extract_features(table, "my-projection", tmp_path / "c", max_seconds=2.0,
                                progress=False)
    finally:
        unregister_backbone("my-projection")
    assert same.path == cache.path
    config = RunConfig(variant="hcld", features=str(cache.path), out_dir=str(tmp_path / "runs"),
                       max_epochs=2, batch_size=16, embed_dim=16, hidden_dim=16, n_layers=1,
                       lcl_text_encoder="learned", device="cpu", warmup_epochs=0)
    metrics = train_run(config)
    assert 0.0 <= metrics["test"]["emotion"]["ua"] <= 1.0 and metrics["n_test"] > 0
    assert (config.run_dir / "metrics.json").is_file()


class CountingFbank(ProjectedFbank):
    """ProjectedFbank that counts the waveforms it encodes and takes its time over them."""

    encoded = 0

    def forward(self, waves, layers):
        import time

        CountingFbank.encoded += len(waves)
        time.sleep(0.01)
        return super().forward(waves, layers)


def test_two_extractions_of_one_cache_at_once_encode_it_once(tmp_path):
    """Two chapters of a batch asking for the same cache at the same time: one extracts under
    the cache's lock, the other waits and reads the finished cache."""
    import concurrent.futures

    from hcld_lib.data.synthetic import synthesize_corpus

    table = synthesize_corpus(tmp_path / "corpus", n_utterances=40, seed=0)
    CountingFbank.encoded = 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(lambda _: extract_features(table, CountingFbank(0), tmp_path / "c",
                                                          max_seconds=2.0, batch_size=4,
                                                          progress=False), range(2)))
    assert CountingFbank.encoded == 40
    assert caches[0].path == caches[1].path
    np.testing.assert_array_equal(caches[0].array, caches[1].array)


def test_entry_point_backbone_is_found_by_name(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."hcld.backbones"]`` (here a distribution
    written on sys.path, as pip would install it)."""
    from hcld_lib.features.registry import plugged_names

    site = tmp_path / "site"
    (site / "user_encoders-0.1.dist-info").mkdir(parents=True)
    (site / "user_encoders-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: user-encoders\nVersion: 0.1\n")
    (site / "user_encoders-0.1.dist-info" / "entry_points.txt").write_text(
        "[hcld.backbones]\nuser-projection = user_encoders:make\nbroken = user_encoders:nope\n")
    (site / "user_encoders.py").write_text(
        "from test_features import ProjectedFbank\n\ndef make():\n    return ProjectedFbank(3)\n")
    monkeypatch.syspath_prepend(str(site))
    assert {"user-projection", "broken"} <= set(plugged_names())
    table = _table(tmp_path / "wav", [0.6, 1.1])
    cache = extract_features(table, "user-projection", tmp_path / "c", progress=False)
    assert cache.meta["key_parts"]["identity"]["seed"] == 3 and cache.feature_dim == 16
    with pytest.raises(HcldError, match=r"cannot load the entry point broken = user_encoders:nope"):
        extract_features(table, "broken", tmp_path / "c", progress=False)


def test_plugged_in_backbone_errors_are_clear(tmp_path):
    from hcld_lib.features.registry import register_backbone, unregister_backbone

    table = _table(tmp_path / "wav", [0.5])
    with pytest.raises(HcldError, match="is a dict, not a hcld_lib.features.backbone.Backbone"):
        extract_features(table, {"spec": "fbank"}, tmp_path / "c")
    register_backbone("mine", ProjectedFbank)
    try:
        with pytest.raises(HcldError) as err:
            extract_features(table, "nobody-registered-this", tmp_path / "c")
        message = str(err.value)
        for known in ("'fbank'", "'whisper-tiny.en'", "'hf:<model name or folder>'", "'mine'"):
            assert known in message
        with pytest.raises(HcldError, match="registered already"):
            register_backbone("mine", ProjectedFbank)
    finally:
        unregister_backbone("mine")
    with pytest.raises(HcldError, match="built-in backbone name"):
        register_backbone("whisper-tiny.en", ProjectedFbank)
    bad = ProjectedFbank()
    bad.feature_dim = 0
    with pytest.raises(HcldError, match="attribute feature_dim must be a positive int"):
        extract_features(table, bad, tmp_path / "c")
    bad = ProjectedFbank()
    bad.identity = lambda: {"weights": np.zeros(3)}
    with pytest.raises(HcldError, match="identity\\(\\) must return a JSON dict"):
        extract_features(table, bad, tmp_path / "c")
