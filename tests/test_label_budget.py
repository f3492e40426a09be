"""The label-budget experiment: runs, resumption, summaries and their sentences."""

from __future__ import annotations

import pandas as pd
import pytest
from test_pretraining import _config, _stand_in_embeddings
from test_pretraining import cache_path as cache_path  # the fixture, shared

from hcld_lib.experiments.label_budget import (
    label_budget_experiment,
    label_budget_sentences,
    label_budget_table,
    summarize_label_budget,
)
from hcld_lib.io import HcldError

# --- the label-budget experiment --------------------------------------------------------------


def test_label_budget_runs_and_resumes(cache_path, tmp_path, monkeypatch):
    base = _config(cache_path, tmp_path, "hcld", epochs=1)
    spk = _stand_in_embeddings(cache_path)
    df = label_budget_experiment(base, spk, fractions=(0.5, 1.0), folds=[0], out_dir=tmp_path,
                                 k=2, pretrain_epochs=1, progress=False)
    assert len(df) == 6
    assert set(df["condition"]) == {"none", "cluster", "cluster+hcld"}
    assert df.set_index("condition").loc["cluster+hcld", "variant"].tolist() == ["hcld", "hcld"]
    small = df[df["train_fraction"] == 0.5]["n_train"]
    full = df[df["train_fraction"] == 1.0]["n_train"]
    assert small.max() < full.min()
    assert (df[df["condition"] != "none"]["pretrained"] != "").all()
    assert len(list((tmp_path / "pretrained").glob("*.pt"))) == 1  # one encoder per fold
    assert (tmp_path / "label_budget.csv").is_file()

    # a second call trains nothing: runs are skipped, the encoder is reused
    import hcld_lib.experiments.label_budget as lb

    monkeypatch.setattr(lb, "pretrain_emotion_encoder",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = label_budget_experiment(base, spk, fractions=(0.5, 1.0), folds=[0],
                                    out_dir=tmp_path, k=2, pretrain_epochs=1, progress=False)
    pd.testing.assert_frame_equal(df, again)

    summary = summarize_label_budget(df)
    assert list(summary["condition"]) == ["none", "none", "cluster", "cluster",
                                          "cluster+hcld", "cluster+hcld"]
    assert summary["n_folds_run"].eq(1).all()
    table = label_budget_table(summary)
    assert list(table.index) == ["50%", "100%"]
    assert list(table.columns) == ["none", "cluster", "cluster+hcld"]


def test_label_budget_rejects_bad_arguments(cache_path, tmp_path):
    base = _config(cache_path, tmp_path, "hcld", epochs=1)
    spk = _stand_in_embeddings(cache_path)
    with pytest.raises(HcldError, match="unknown condition"):
        label_budget_experiment(base, spk, conditions=("magic",), out_dir=tmp_path)
    with pytest.raises(HcldError, match="fractions"):
        label_budget_experiment(base, spk, fractions=(0.0,), out_dir=tmp_path)


def test_label_budget_sentences_weigh_the_gain_against_the_fold_spread():
    nan = float("nan")
    summary = pd.DataFrame(
        [("none", 0.1, 0.40, 0.01), ("none", 1.0, 0.62, 0.01), ("none", 0.5, 0.50, nan),
         ("cluster", 0.1, 0.50, 0.02), ("cluster", 1.0, 0.60, 0.05), ("cluster", 0.5, 0.55, nan),
         ("cluster+hcld", 0.1, 0.30, 0.02)],
        columns=["condition", "train_fraction", "ua_mean", "ua_std"],
    )
    lines = label_budget_sentences(summary)
    assert len(lines) == 4
    # +10.0 points, spread max(2, 1) = 2: helps
    assert "10% labels: +10.0 UA points" in lines[0] and "(fold spread 2.0)" in lines[0]
    assert lines[0].endswith("**helps**.")
    # -2.0 points within a spread of 5.0: inconclusive
    assert "100% labels: -2.0 UA points" in lines[1] and lines[1].endswith("**inconclusive**.")
    # one fold: no spread, no verdict
    assert "50% labels: +5.0" in lines[2] and lines[2].endswith("**inconclusive**.")
    # -10.0 points beyond a spread of 2.0: hurts
    assert lines[3].startswith("- cluster pretraining + HCLD, 10% labels: -10.0")
    assert lines[3].endswith("**hurts**.")
