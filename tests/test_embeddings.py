"""Reading what runs saved: one reader of a run's test embeddings, and the speaker spaces."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hcld_lib.analysis.embeddings import load_run_embeddings, speaker_space_sets
from hcld_lib.io import HcldError, atomic_save_npz


def _fake_run(run_dir, variant: str, with_x_s: bool, fold: int = 0, ids=("u1", "u2", "u3")):
    run_dir.mkdir(parents=True)
    arrays = dict(
        x_e=np.ones((3, 4), np.float32),
        emotion=np.array(["neu", "hap", "sad"]),
        speaker=np.array(["a", "a", "b"]),
        utterance_id=np.array(list(ids)),
        emotion_pred=np.array(["neu", "neu", "sad"]),
    )
    if with_x_s:
        arrays["x_s"] = np.full((3, 4), float(fold), np.float32)
    atomic_save_npz(run_dir / "embeddings.npz", **arrays)
    cfg = {"variant": variant, "emotion_arch": "cnn", "fold": fold, "speaker_branch": with_x_s}
    (run_dir / "metrics.json").write_text(json.dumps({"config": cfg}))


def test_run_embeddings_from_a_folder_a_file_or_a_dict(tmp_path):
    _fake_run(tmp_path / "hcld", "hcld", True)
    _fake_run(tmp_path / "emo", "emo_only", False)
    run = load_run_embeddings(tmp_path / "hcld")
    assert run.x_s.shape == (3, 4) and list(run.speaker) == ["a", "a", "b"]
    assert run.config["variant"] == "hcld" and list(run.emotion_pred) == ["neu", "neu", "sad"]
    assert load_run_embeddings(tmp_path / "hcld" / "embeddings.npz").run_dir == tmp_path / "hcld"
    assert load_run_embeddings(tmp_path / "emo").x_s is None
    with pytest.raises(HcldError, match="no speaker branch"):
        load_run_embeddings(tmp_path / "emo", require_x_s=True)
    with pytest.raises(HcldError, match="does not exist"):
        load_run_embeddings(tmp_path / "missing")
    with pytest.raises(HcldError, match="lacks"):
        load_run_embeddings({"x_e": np.zeros((3, 2))})
    with pytest.raises(HcldError, match="no 'utterance_id'"):
        load_run_embeddings({"x_e": np.zeros((3, 2)), "emotion": np.zeros(3),
                             "speaker": np.zeros(3)}, require_ids=True)


def test_damaged_run_files_are_named_with_the_remedy(tmp_path):
    _fake_run(tmp_path / "run", "hcld", True)
    npz, metrics = tmp_path / "run" / "embeddings.npz", tmp_path / "run" / "metrics.json"
    metrics.write_text(metrics.read_text()[:10])
    with pytest.raises(HcldError, match=rf"run metrics {metrics} is not valid JSON.*delete the "
                       r"run folder .* and train the run again"):
        load_run_embeddings(tmp_path / "run")
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(HcldError, match=rf"run embeddings {npz} is truncated or not an .npz"):
        load_run_embeddings(tmp_path / "run")


def test_speaker_spaces_are_scored_on_the_same_utterances(tmp_path):
    _fake_run(tmp_path / "orth0", "orth", True, 0, ("u1", "u2", "u3"))
    _fake_run(tmp_path / "hcld0", "hcld", True, 0, ("u1", "u2", "u3"))
    _fake_run(tmp_path / "hcld1", "hcld", True, 1, ("u4", "u5", "u6"))
    runs = pd.DataFrame({"run_dir": [str(tmp_path / n) for n in ("orth0", "hcld0", "hcld1")],
                         "variant": ["orth", "hcld", "hcld"], "fold": [0, 0, 1],
                         "seed": [0, 0, 0]})
    table = pd.DataFrame({"utterance_id": [f"u{i}" for i in range(1, 7)],
                          "speaker": ["a", "a", "b", "a", "b", "b"],
                          "emotion": ["neu", "hap", "sad", "ang", "neu", "hap"]})
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    sources = speaker_space_sets(runs, table, emb, list(table["utterance_id"]), "enc")
    assert list(sources) == ["enc", "X_s:hcld", "X_s:orth"]  # variants in sorted order
    enc = sources["enc"]
    assert len(enc) == 2 and enc[0][0].tolist() == emb[:3].tolist()
    assert list(enc[1][1]) == ["a", "b", "b"] and list(enc[1][2]) == ["ang", "neu", "hap"]
    assert [x[0, 0] for x, _, _ in sources["X_s:hcld"]] == [0.0, 1.0]
    with pytest.raises(HcldError, match="have no enc embedding"):
        speaker_space_sets(runs, table.iloc[:4], emb[:4], list(table["utterance_id"][:4]), "enc")
