"""Verdicts across training budgets: budgets read from histories, robust or not."""

import numpy as np
import pandas as pd
import pytest

from hcld_lib.experiments import budgets as bd
from hcld_lib.experiments.comparisons import claim_stability, claims_by_budget
from hcld_lib.io import HcldError


def _run(folder, name, val, test, plateau, variant, fold):
    """A finished run's folder with a history and its row of the runs table (percent)."""
    run_dir = folder / name
    run_dir.mkdir(parents=True)
    n = len(val)
    pd.DataFrame({"epoch": np.arange(1, n + 1), "val_emotion_ua": val, "test_emotion_ua": test,
                  "test_emotion_wa": test, "speaker_test_speaker_wa": np.full(n, 0.5),
                  "speaker_test_speaker_ua": np.full(n, 0.5)}).to_csv(run_dir / "history.csv",
                                                                       index=False)
    labels = np.array(["neu", "hap", "ang", "sad"] * 5)
    np.savez(run_dir / "embeddings.npz", x_e=np.zeros((20, 2), np.float32), emotion=labels,
             speaker=np.array(["s"] * 20), utterance_id=np.array([f"u{i}" for i in range(20)]),
             emotion_pred=labels)
    best = int(np.argmax(val))
    return {"run_dir": str(run_dir), "variant": variant, "arch": "cnn", "fold": fold, "seed": 0,
            "emo_ua": 100 * test[best], "emo_wa": 100 * test[best], "spk_ua": 50.0,
            "spk_wa": 50.0, "selected_epoch": best + 1, "plateau_epoch": plateau,
            "converged": plateau is not None}


@pytest.fixture
def runs(tmp_path):
    """Four folds of HCLD and EMO-only over 6 epochs: at 2 epochs HCLD is behind (its test UA
    peaks later), at its end it is ahead; every run reaches its plateau at epoch 4."""
    rows = []
    for fold in range(4):
        d = 0.01 * fold
        val = np.array([0.3, 0.4, 0.5, 0.6, 0.6, 0.6])
        rows.append(_run(tmp_path, f"hcld{fold}", val,
                         np.array([0.2, 0.30 + d, 0.5, 0.7 + d, 0.7, 0.7]), 4, "hcld", fold))
        rows.append(_run(tmp_path, f"emo{fold}", val,
                         np.array([0.2, 0.50 + d, 0.5, 0.6 - d, 0.6, 0.6]), 4, "emo_only", fold))
    return pd.DataFrame(rows)


def test_budget_runs_reads_each_budget_from_the_first_epochs(runs):
    out = bd.budget_runs(runs, [2, 4], final=bd.PLATEAU)
    assert bd.budget_order(out["budget"]) == ["2 epochs", "4 epochs", "plateau stop"]
    at2 = out[(out["budget"] == "2 epochs") & (out["variant"] == "hcld")]
    assert at2["selected_epoch"].tolist() == [2, 2, 2, 2]
    assert at2["emo_ua"].tolist() == pytest.approx([30, 31, 32, 33])
    assert not at2["converged"].any()  # the plateau came at epoch 4
    at4 = out[out["budget"] == "4 epochs"]
    assert at4["converged"].all() and (at4["selected_epoch"] == 4).all()
    final = out[out["budget"] == "plateau stop"]
    pd.testing.assert_series_equal(final["emo_ua"].reset_index(drop=True),
                                   runs["emo_ua"].reset_index(drop=True))


def test_a_budget_longer_than_a_run_is_refused(runs):
    with pytest.raises(HcldError, match="trained 6"):
        bd.budget_runs(runs, [8])


def test_the_verdict_changes_with_the_budget_and_is_robust_where_runs_converged(runs):
    table = claims_by_budget(bd.budget_runs(runs, [2, 4]))
    verdicts = table.set_index("budget")["verdict"].to_dict()
    assert verdicts == {"2 epochs": "contradicted", "4 epochs": "held", "plateau stop": "held"}
    assert table.set_index("budget")["converged_share"].to_dict() == {
        "2 epochs": 0.0, "4 epochs": 1.0, "plateau stop": 1.0}
    stable = claim_stability(table).iloc[0]
    assert stable["robust"] and stable["verdict"] == "held" and stable["changes"]
    assert stable["converged_budgets"] == ["4 epochs", "plateau stop"]
    text = bd.stability_sentences(claim_stability(table), lambda r: "HCLD vs EMO-only")[0]
    assert "contradicted at 2 epochs (0 % of runs converged)" in text
    assert "Robust: held" in text and "changes with the budget" in text


def test_no_robust_verdict_without_a_budget_where_every_run_converged():
    table = pd.DataFrame({"comparison": ["x", "x"], "budget": ["5 epochs", "plateau stop"],
                          "verdict": ["held", "not shown"], "converged_share": [0.5, 0.9]})
    row = bd.stability(table, ["comparison"]).iloc[0]
    assert not row["robust"] and row["verdict"] is None and row["changes"]
    assert "no robust verdict" in bd.stability_sentences(bd.stability(table, ["comparison"]),
                                                         lambda r: r["comparison"])[0]
    split = table.assign(converged_share=[1.0, 1.0])
    row = bd.stability(split, ["comparison"]).iloc[0]
    assert not row["robust"] and row["converged_budgets"] == ["5 epochs", "plateau stop"]


def test_the_headline_says_when_robust_rests_on_one_converged_budget():
    """Two comparisons: one converged at 5 epochs and at the plateau (robust on two budgets),
    one only at the plateau (robust on one): the headline counts both and names the second."""
    table = pd.DataFrame({"comparison": ["x", "x", "y", "y"],
                          "budget": ["5 epochs", "plateau stop"] * 2,
                          "verdict": ["held", "held", "contradicted", "not shown"],
                          "converged_share": [1.0, 1.0, 0.4, 1.0]})
    text = bd.stability_headline(bd.stability(table, ["comparison"]))
    assert text.startswith("Across training budgets: 2 of 2 verdicts are robust")
    assert "; 1 of them rest on one such budget only" in text
    assert text.endswith("; 1 change with the budget.")
