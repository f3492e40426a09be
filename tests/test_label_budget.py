"""The label-budget experiment: runs, resumption, summaries and their sentences."""

from __future__ import annotations

import pandas as pd
import pytest
from test_pretraining import _config, _stand_in_embeddings
from test_pretraining import cache_path as cache_path  # the fixture, shared

from hcld_lib.experiments.label_budget import (
    label_budget_experiment,
    label_budget_table,
    summarize_label_budget,
)
from hcld_lib.io import HcldError

# --- the label-budget experiment --------------------------------------------------------------


def test_label_budget_runs_and_resumes(cache_path, tmp_path, monkeypatch):
    base = _config(cache_path, tmp_path, "hcld", max_epochs=1)
    spk = _stand_in_embeddings(cache_path)
    df = label_budget_experiment(base, spk, fractions=(0.5, 1.0), folds=[0], out_dir=tmp_path,
                                 k=2, pretrain_epochs=1, progress=False, engine="serial")
    assert len(df) == 6
    assert set(df["condition"]) == {"none", "cluster", "cluster+hcld"}
    assert df.set_index("condition").loc["cluster+hcld", "variant"].tolist() == ["hcld", "hcld"]
    small = df[df["train_fraction"] == 0.5]["n_train"]
    full = df[df["train_fraction"] == 1.0]["n_train"]
    assert small.max() < full.min()
    assert (df[df["condition"] != "none"]["pretrained"] != "").all()
    assert len(list((tmp_path / "pretrained").glob("*.pt"))) == 1  # one encoder per fold

    # a second call trains nothing: runs are skipped, the encoder is reused
    import hcld_lib.experiments.label_budget as lb

    monkeypatch.setattr(lb, "pretrain_emotion_encoder",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = label_budget_experiment(base, spk, fractions=(0.5, 1.0), folds=[0],
                                    out_dir=tmp_path, k=2, pretrain_epochs=1, progress=False,
                                    engine="serial")
    pd.testing.assert_frame_equal(df, again)

    summary = summarize_label_budget(df)
    assert list(summary["condition"]) == ["none", "none", "cluster", "cluster",
                                          "cluster+hcld", "cluster+hcld"]
    assert summary["n_runs"].eq(1).all()
    table = label_budget_table(summary)
    assert list(table.index) == ["50%", "100%"]
    assert list(table.columns) == ["none", "cluster", "cluster+hcld"]


def test_label_budget_rejects_bad_arguments(cache_path, tmp_path):
    base = _config(cache_path, tmp_path, "hcld", max_epochs=1)
    spk = _stand_in_embeddings(cache_path)
    with pytest.raises(HcldError, match="unknown condition"):
        label_budget_experiment(base, spk, conditions=("magic",), out_dir=tmp_path)
    with pytest.raises(HcldError, match="fractions"):
        label_budget_experiment(base, spk, fractions=(0.0,), out_dir=tmp_path)


def test_pretraining_trend_says_whether_the_loss_was_still_falling():
    """8 epochs: the last 2 against the 2 before. 1.0 -> 0.8 is a 20 % fall, 0.50 -> 0.495 a
    1 % fall: 10.5 % on average, still falling; the level curve alone has levelled off."""
    import pandas as pd

    from hcld_lib.experiments.label_budget import pretraining_trend

    falling = pd.DataFrame({"loss": [1.2, 1.1, 1.0, 1.0, 1.0, 1.0, 0.8, 0.8]})
    level = pd.DataFrame({"loss": [0.6, 0.55, 0.5, 0.5, 0.5, 0.5, 0.495, 0.495]})
    text = pretraining_trend({"fold 0": falling, "fold 1": level})
    assert "fold 0 +20.0 %, fold 1 +1.0 %; on average +10.5 %." in text
    assert "had not levelled off" in text
    assert "It had levelled off" in pretraining_trend({"fold 1": level})
    assert "too short" in pretraining_trend({"fold 0": falling.iloc[:7]})
