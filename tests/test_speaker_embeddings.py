"""Speaker embeddings: the offline resemblyzer path, the cache, the ECAPA error, run embeddings."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from hcld_lib.features.speaker_encoders import (
    ResemblyzerEncoder,
    load_speaker_encoder,
    speaker_embeddings,
)
from hcld_lib.io import HcldError

SR = 16000


def _voice(f0: float, seconds: float, seed: int) -> np.ndarray:
    """A crude voiced sound: a pulse train at f0 through two resonances, amplitude-modulated."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / SR
    src = np.sign(np.sin(phase)) * 0.3 + 0.01 * rng.normal(size=t.size)
    out = src * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) ** 2
    for fc in (500 * f0 / 120, 1500 * f0 / 120):
        out = out + 0.3 * np.sin(2 * np.pi * fc * t) * (np.abs(np.sin(phase / 2)) > 0.5)
    return (0.2 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("spk_audio")
    rows = []
    for i, (f0, dur) in enumerate([(110, 1.2), (110, 2.5), (220, 1.8), (220, 3.1)]):
        path = root / f"u{i}.wav"
        sf.write(path, _voice(f0, dur, i), SR)
        rows.append({"utterance_id": f"u{i}", "path": str(path), "speaker": f"s{f0}",
                     "emotion": "neu", "session": "1", "gender": ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def encoder() -> ResemblyzerEncoder:
    return ResemblyzerEncoder(device="cpu")


def test_resemblyzer_offline_unit_norm_256(tiny_table, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb, ids = speaker_embeddings(tiny_table, "resemblyzer", tmp_path, progress=False)
    assert ids == ["u0", "u1", "u2", "u3"]
    assert emb.shape == (4, 256) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # same voice closer than a different voice
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2]


def test_batched_embedding_equals_embed_utterance(encoder, tiny_table):
    from hcld_lib.data.audio import load_audio

    wavs = [load_audio(p, SR, max_seconds=None)[0] for p in tiny_table["path"]]
    batched = encoder.embed(wavs)
    for wav, row in zip(wavs, batched):
        ref = encoder.model.embed_utterance(encoder.prepare(wav))
        np.testing.assert_allclose(row, ref, atol=1e-5)


def test_cache_is_reused_and_complete(tiny_table, tmp_path, monkeypatch):
    emb, _ = speaker_embeddings(tiny_table, "resemblyzer", tmp_path, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("spk-")]
    assert (folder / "COMPLETE").is_file()

    def boom(self, wavs):
        raise AssertionError("the cache should have been read, not recomputed")

    monkeypatch.setattr(ResemblyzerEncoder, "embed", boom)
    again, _ = speaker_embeddings(tiny_table, "resemblyzer", tmp_path, progress=False)
    np.testing.assert_array_equal(emb, again)
    # another table -> another key -> a new computation (which fails here, leaving no cache)
    with pytest.raises(AssertionError):
        speaker_embeddings(tiny_table.iloc[:2], "resemblyzer", tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    (folder / "embeddings.npy").write_bytes((folder / "embeddings.npy").read_bytes()[:100])
    with pytest.raises(HcldError, match=r"speaker-embedding cache file .*embeddings.npy is "
                       r"truncated.*delete the folder"):
        speaker_embeddings(tiny_table, "resemblyzer", tmp_path, progress=False)


def test_ecapa_without_speechbrain_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "speechbrain", None)  # import speechbrain -> ImportError
    monkeypatch.setitem(sys.modules, "speechbrain.inference", None)
    monkeypatch.setitem(sys.modules, "speechbrain.inference.speaker", None)
    monkeypatch.setitem(sys.modules, "speechbrain.pretrained", None)
    with pytest.raises(HcldError, match="pip install speechbrain") as info:
        load_speaker_encoder("ecapa")
    assert "speechbrain:models/spkrec-ecapa-voxceleb" in str(info.value)
    with pytest.raises(HcldError, match="pip install speechbrain"):
        load_speaker_encoder("speechbrain:/some/folder")


def test_unknown_encoder_name():
    with pytest.raises(HcldError, match="unknown speaker encoder"):
        load_speaker_encoder("xvector-9000")


class _FakeClassifier:
    """Stands in for speechbrain's EncoderClassifier: a 192-d embedding of each waveform."""

    loaded_from: dict = {}

    @classmethod
    def from_hparams(cls, source, savedir, run_opts):
        cls.loaded_from = {"source": source, "savedir": savedir, "run_opts": run_opts}
        return cls()

    def eval(self):
        return self

    def encode_batch(self, wavs, wav_lens):
        import torch

        assert wavs.dim() == 2 and wav_lens.max() == 1.0
        n = (wav_lens * wavs.shape[1]).round().long()
        energy = torch.stack([w[:k].pow(2).mean() for w, k in zip(wavs, n)])
        return energy[:, None, None].expand(-1, 1, 192).clone()


@pytest.fixture
def fake_speechbrain(monkeypatch):
    import types

    pkg = types.ModuleType("speechbrain")
    inference = types.ModuleType("speechbrain.inference")
    speaker = types.ModuleType("speechbrain.inference.speaker")
    speaker.EncoderClassifier = _FakeClassifier
    for name, mod in [("speechbrain", pkg), ("speechbrain.inference", inference),
                      ("speechbrain.inference.speaker", speaker)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return _FakeClassifier


def test_speechbrain_local_folder_path(fake_speechbrain, tiny_table, tmp_path):
    folder = tmp_path / "spkrec-ecapa-voxceleb"
    folder.mkdir()
    with pytest.raises(HcldError, match="no hyperparams.yaml"):
        load_speaker_encoder(f"speechbrain:{folder}")
    (folder / "hyperparams.yaml").write_text("# model definition\n")
    enc = load_speaker_encoder(f"speechbrain:{folder}")
    assert fake_speechbrain.loaded_from["source"] == str(folder)
    assert enc.dim == 192
    emb, ids = speaker_embeddings(tiny_table, f"speechbrain:{folder}", tmp_path / "cache",
                                  progress=False)
    assert emb.shape == (4, 192) and ids == ["u0", "u1", "u2", "u3"]


def test_speechbrain_missing_folder_and_offline_name(fake_speechbrain, tmp_path, monkeypatch):
    with pytest.raises(HcldError, match="does not exist"):
        load_speaker_encoder(f"speechbrain:{tmp_path / 'nowhere' / 'model'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HcldError, match="HF_HUB_OFFLINE=1"):
        load_speaker_encoder("ecapa")


def test_ecapa_downloads_by_hub_name_into_the_cache_when_online(fake_speechbrain, tmp_path,
                                                               monkeypatch):
    from hcld_lib import runtime

    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HCLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    enc = load_speaker_encoder("ecapa")
    assert enc.name == "ecapa"
    assert fake_speechbrain.loaded_from["source"] == "speechbrain/spkrec-ecapa-voxceleb"
    assert fake_speechbrain.loaded_from["savedir"] == str(
        tmp_path / "cache" / "speechbrain" / "speechbrain--spkrec-ecapa-voxceleb")
    assert not (tmp_path / "models").exists()  # nothing dropped in the working folder
