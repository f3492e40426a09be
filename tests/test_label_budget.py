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


def test_pretraining_convergence_counts_the_encoders_at_their_plateau():
    from hcld_lib.experiments.label_budget import pretraining_convergence

    def meta(converged, trained, kept, loss):
        return {"converged": converged, "epochs_trained": trained, "best_epoch": kept,
                "held_out_loss": loss, "held_out_chance": 3.7}

    text = pretraining_convergence({"fold 0": meta(True, 12, 9, 3.4),
                                    "fold 1": meta(True, 14, 11, 3.6)})
    assert text.startswith("Pretraining reached the plateau of its held-out cluster loss in 2 "
                           "of 2 encoders, after 12-14 epochs; the kept epochs (lowest held-out "
                           "loss) were 9-11, with a held-out loss of 3.50 on average against "
                           "3.70")
    text = pretraining_convergence({"fold 0": meta(True, 12, 9, 3.4),
                                    "fold 1": meta(False, 60, 60, 3.0)})
    assert "in 1 of 2 encoders" in text and "not converged; raise pretrain_epochs" in text
    assert "made before" in pretraining_convergence({"fold 0": {"epochs": 20}})
