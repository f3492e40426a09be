"""The paper's comparisons, the readings of the open points and the label budget, all judged by
the one verdict rule, on runs whose differences are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hcld_lib.experiments import comparisons
from hcld_lib.experiments import readings as rd
from hcld_lib.experiments.label_budget import label_budget_comparisons, label_budget_sentences


def _rows(gaps: dict[str, float], archs=("cnn", "lstm"), reading: str | None = None):
    """Runs of EMO-only at 60 % (+ fold/seed noise) and other variants at 60 + gap, four
    (fold, seed) pairs per architecture; the noise is shared, so each difference is exact."""
    rows = []
    for arch in archs:
        for fold in (0, 1):
            for seed in (0, 1):
                base = 60.0 + fold - seed
                for variant, gap in {"emo_only": 0.0, **gaps}.items():
                    jitter = 0.1 * (fold + seed) if variant != "emo_only" else 0.0
                    rows.append({"variant": variant, "arch": arch, "fold": fold, "seed": seed,
                                 "emo_ua": base + gap + jitter, "emo_wa": base + gap,
                                 "train_fraction": 1.0})
    df = pd.DataFrame(rows)
    return df if reading is None else df.assign(reading=reading)


def test_claims_carry_interval_pairs_and_verdict():
    claims = comparisons.claims_table(_rows({"hcld": 5.0, "orth": 7.0}), metrics=("emo_ua",))
    cnn = claims[(claims.comparison == "HCLD vs EMO-only") & (claims.arch == "cnn")].iloc[0]
    # differences 5.0, 5.1, 5.1, 5.2: mean 5.1, sd 0.0816, t_3 = 3.182
    assert cnn["mean"] == pytest.approx(5.1) and cnn["n_pairs"] == 4
    half = 3.182446305 * np.std([5.0, 5.1, 5.1, 5.2], ddof=1) / 2
    assert cnn["ci_low"] == pytest.approx(5.1 - half)
    assert cnn["ci_high"] == pytest.approx(5.1 + half)
    assert cnn["verdict"] == "held" and cnn["paper"] == pytest.approx(76.08 - 71.61)
    vs_orth = claims[(claims.comparison == "HCLD vs orth") & (claims.arch == "cnn")].iloc[0]
    assert vs_orth["mean"] == pytest.approx(-2.0) and vs_orth["verdict"] == "contradicted"
    sentence = comparisons.claim_sentences(claims)[0]
    assert sentence.startswith("HCLD vs EMO-only, emotion UA (cnn): +5.1 points, 95 % CI [")
    assert "over 4 (fold, seed) pairs: held (paper +4.5)." in sentence
    assert "2 held, 2 contradicted, 0 not shown" in comparisons.claims_summary(claims)


def test_two_folds_are_too_few_runs_for_a_verdict():
    df = _rows({"hcld": 5.0})
    df = df[df["seed"] == 0]
    row = comparisons.claims_table(df, metrics=("emo_ua",)).iloc[0]
    assert row["n_pairs"] == 2 and row["verdict"] == "too few runs"


def test_readings_name_the_ones_under_which_the_paper_holds():
    rows = pd.concat([
        _rows({"hcld": 5.0, "orth": 2.0}, reading="shared encoder"),
        _rows({"hcld": -3.0, "orth": 2.0}, reading="as printed"),
        _rows({"hcld": 0.0, "orth": 0.0}, archs=("cnn",), reading="margin 0.2"),
        # the same HCLD runs as printed, run by run (a switch that does not reach X_e)
        _rows({"hcld": -3.0, "orth": 2.0}, reading="printed hinge"),
    ])
    chosen = [rd.Reading("as printed", "defaults"), rd.Reading("shared encoder", "branches"),
              rd.Reading("margin 0.2", "margin m", {"margin": 0.2}),
              rd.Reading("printed hinge", "L_neg form", {"hinge": "printed"})]
    table = rd.readings_table(rows, chosen)
    assert set(table["comparison"]) == {"HCLD vs EMO-only", "HCLD vs orth"}
    assert rd.holding_readings(table) == ["shared encoder"]
    verdicts = table.set_index(["reading", "arch", "comparison"])["verdict"]
    assert verdicts[("as printed", "lstm", "HCLD vs EMO-only")] == "contradicted"
    assert verdicts[("margin 0.2", "cnn", "HCLD vs orth")] == "not shown"
    summary = rd.readings_summary(table, "the synthetic corpus")
    assert "hold under: shared encoder" in summary and "at least 4 (fold, seed) pairs" in summary
    lines = rd.reading_sentences(table)
    assert lines[0].startswith("**shared encoder** (branches): reproduces the paper's direction")
    assert lines[1].startswith("**as printed** (defaults): contradicts the paper")
    assert lines[2].startswith("**margin 0.2** (margin m): does not reproduce it")
    same = table.groupby("reading")["same_as_printed"].all()
    assert same["printed hinge"] and not same["as printed"] and not same["shared encoder"]
    assert lines[3].endswith("this switch does not reach X_e here.")
    assert not any(line.endswith("not reach X_e here.") for line in lines[:3])


def test_the_readings_share_the_runs_a_reading_does_not_change():
    from hcld_lib.training.config import RunConfig

    base = RunConfig(max_epochs=1)
    by = rd.reading_configs(base, rd.readings(), ["cnn"], [0, 1], [0, 1])
    assert len(by) == len(rd.SWITCH_READINGS) + len(rd.SWEEP_READINGS)
    def runs(variant: str) -> set[str]:
        return {c.resolved_run_name for configs in by.values() for c in configs
                if c.variant == variant}

    # 4 (fold, seed) cells per variant and reading. HCLD differs under every reading but the
    # orth form (which it does not read); EMO-only only with the shared encoder; orth with the
    # shared encoder and with its /B form
    assert len(runs("hcld")) == 4 * (len(by) - 1)
    assert len(runs("emo_only")) == 4 * 2
    assert len(runs("orth")) == 4 * 3
    contrastive = next(c for c in by["contrastive x0.1"] if c.variant == "hcld")
    assert (contrastive.w_icld, contrastive.w_supcon, contrastive.w_ce_speaker) == (0.1, 0.1, 1.0)
    orth = next(c for c in by["contrastive x0.1"] if c.variant == "orth")
    assert (orth.w_icld, orth.w_orth) == (0.0, 1.0)  # a weight a variant does not have stays off


def test_label_budget_verdicts_follow_the_one_rule():
    rows = []
    for fold in (0, 1):
        for seed in (0, 1):
            for condition, gain in (("none", 0.0), ("cluster", 4.0), ("cluster+hcld", -4.0)):
                rows.append({"condition": condition, "train_fraction": 0.1, "fold": fold,
                             "seed": seed, "emo_ua": 50.0 + fold + gain + 0.1 * seed})
    table = label_budget_comparisons(pd.DataFrame(rows))
    verdicts = table.set_index("condition")["verdict"]
    assert verdicts["cluster"] == "held" and verdicts["cluster+hcld"] == "contradicted"
    lines = label_budget_sentences(table)
    assert lines[0].startswith("- cluster pretraining + EMO-only, 10% labels, vs no pretraining: "
                               "+4.0 UA points, 95 % CI")


def test_the_index_lists_every_experiment_with_its_headline(tmp_path):
    from hcld_lib.experiments import report

    done, empty = tmp_path / "synthetic__fbank__paper__quick", tmp_path / "iemocap__hubert__loso"
    done.mkdir()
    empty.mkdir()
    claims = comparisons.claims_table(_rows({"hcld": 5.0, "orth": 7.0}), metrics=("emo_ua",))
    claims.to_csv(done / f"{report.CLAIMS_TABLE}.csv", index=False)
    rows = pd.concat([_rows({"hcld": 5.0, "orth": 2.0}, reading="shared encoder"),
                      _rows({"hcld": -3.0, "orth": 2.0}, reading="as printed")])
    table = rd.readings_table(rows, [rd.Reading("as printed", "defaults"),
                                     rd.Reading("shared encoder", "branches")])
    table.to_csv(done / f"{report.READINGS_TABLE}.csv", index=False)
    (done / "report.md").write_text("# report\n")
    lines = report.write_index(tmp_path).read_text().splitlines()
    row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `")}
    assert set(row) == {f"`{done.name}`", f"`{empty.name}`"}
    assert "cnn +5.1 [" in row[f"`{done.name}`"] and "(held)" in row[f"`{done.name}`"]
    assert row[f"`{done.name}`"].rstrip().endswith("| shared encoder |")
    assert f"[report]({done.name}/report.md)" in row[f"`{done.name}`"]
    assert row[f"`{empty.name}`"] == f"| `{empty.name}` | – | – | – |"


def test_the_baselines_beyond_the_paper_are_judged_against_a_stated_direction():
    runs = _rows({"hcld": 5.0, "adversarial": 2.0, "mi": -3.0}, archs=("cnn",))
    claims = comparisons.claims_table(runs, metrics=("emo_ua",)).set_index("comparison")
    assert claims.loc["adversarial vs EMO-only", "verdict"] == "held"  # decoupling helps: +2
    assert claims.loc["MI (CLUB) vs EMO-only", "verdict"] == "contradicted"
    assert claims.loc["HCLD vs adversarial", "verdict"] == "held"
    assert np.isnan(claims.loc["HCLD vs MI (CLUB)", "paper"])
    assert "comparisons with the decoupling baselines beyond the paper" in (
        comparisons.claims_summary(claims.reset_index()))


def test_a_comparison_is_only_made_where_both_variants_ran():
    """The baselines on the CNN only (the quick profile), the paper's variants on two
    architectures: the baseline comparisons get a CNN row and no empty LSTM one."""
    runs = pd.concat([_rows({"hcld": 5.0}, archs=("cnn", "lstm")),
                      _rows({"mi": -3.0}, archs=("cnn",)).query("variant == 'mi'")])
    claims = comparisons.claims_table(runs, metrics=("emo_ua",))
    assert set(claims.loc[claims["b"] == "mi", "arch"]) == {"cnn"}
    assert set(claims.loc[claims["a"] == "mi", "arch"]) == {"cnn"}
    assert set(claims.loc[claims["comparison"] == "HCLD vs EMO-only", "arch"]) == {"cnn", "lstm"}
    assert (claims["n_pairs"] == 4).all()


def test_the_headline_comparisons_on_two_backbones_say_when_the_answer_changes():
    fbank = _rows({"hcld": 5.0, "orth": 1.0}, archs=("cnn", "lstm")).assign(converged=True)
    whisper = _rows({"hcld": -4.0, "orth": 1.0}, archs=("cnn",)).assign(converged=True)
    table = comparisons.claims_by_backbone({"fbank": fbank, "whisper": whisper})
    assert set(table["arch"]) == {"cnn"}  # only what both backbones ran
    vs_emo = table[table["comparison"] == "HCLD vs EMO-only"].set_index("backbone")
    assert vs_emo.loc["fbank", "verdict"] == "held"
    assert vs_emo.loc["whisper", "verdict"] == "contradicted"
    assert (table["converged_share"] == 1.0).all()
    lines = comparisons.backbone_sentences(table)
    assert lines[0].startswith("HCLD vs EMO-only, emotion UA (cnn): held on fbank (+5.1 points")
    assert lines[0].endswith("the verdict changes with the backbone.")


def test_decoupling_sentences_compare_every_variant_with_emo_only():
    """The scorecard's sentence reads every variant's speaker probe on X_e against EMO-only's
    (here 50 %): HCLD 30 % is 20 points less, the adversarial 60 % is 10 points more."""
    from hcld_lib.experiments.report import decoupling_sentences

    nan = float("nan")
    card = pd.DataFrame(
        {"speaker_from_x_e_bacc": [0.5, 0.3, 0.6], "emotion_from_x_e_bacc": [0.7, 0.7, 0.7],
         "emotion_from_x_s_bacc": [nan, 0.4, 0.3], "speaker_from_x_s_bacc": [nan, 0.9, 0.9],
         "speaker_chance_balanced": [0.1] * 3, "emotion_chance_balanced": [0.25] * 3},
        index=["emo_only", "hcld", "adversarial"])
    lines = decoupling_sentences(card)
    assert lines[0].startswith("EMO-only: speaker is read from X_e at 50.0 %")
    assert lines[0].endswith("no speaker branch.")
    assert lines[-1].endswith("HCLD 20.0 points less, adversarial 10.0 points more.")
