"""The ablation grid: cells, resumption, Table II layout, the paper's numbers, the writers."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from hcld_lib.experiments import grid, report, tables
from hcld_lib.experiments.engine import TaskFailed
from hcld_lib.io import HcldError
from hcld_lib.method.variants import PAPER_VARIANTS, VARIANTS
from hcld_lib.training.config import RunConfig


def _metrics(variant: str, arch: str, fold: int, emo_ua: float, spk_ua: float | None = 0.8,
             protocol: str = "paper") -> dict:
    """A metrics.json dict shaped like train_run's."""
    speaker = None if spk_ua is None else {"wa": spk_ua + 0.01, "ua": spk_ua}
    block = {"emotion": {"wa": emo_ua + 0.02, "ua": emo_ua, "f1": emo_ua}, "speaker": speaker}
    config = RunConfig(variant=variant, emotion_arch=arch, fold=fold, n_folds=2,
                       protocol=protocol).to_dict()
    return {"config": config, "fold": fold, "protocol": protocol, "selected_epoch": 3,
            "val": block, "test": block, "speaker_test": block,
            "best_on_test": {"emotion_ua": emo_ua + 0.05, "epoch": 4}}


def _write_runs(root, cells) -> None:
    for variant, arch, fold, ua in cells:
        spk = None if variant == "emo_only" else 0.8
        name = RunConfig(variant=variant, emotion_arch=arch, fold=fold).resolved_run_name
        (root / name).mkdir(parents=True)
        metrics = _metrics(variant, arch, fold, ua, spk)
        (root / name / "metrics.json").write_text(json.dumps(metrics))


def test_paper_table_holds_the_printed_numbers():
    t = tables.PAPER_TABLE.set_index(["variant", "arch"])
    assert len(t) == 15 and set(t.index.get_level_values(0)) == set(PAPER_VARIANTS)
    assert tuple(t.loc[("hcld", "cnn")]) == (75.52, 76.08, 75.70, 75.90)
    assert tuple(t.loc[("hcld_wo_lcl", "transformer")]) == (72.99, 73.62, 81.84, 81.72)
    assert t.loc[("emo_only", "lstm"), "emo_ua"] == 70.95
    assert t.loc[["emo_only"], ["spk_wa", "spk_ua"]].isna().all().all()
    assert any("75.03 / 74.27" in n for n in tables.PAPER_NOTES)  # the unlabelled row: a note


def test_grid_configs_take_each_variants_switches_not_the_bases():
    base = RunConfig(variant="emo_only", max_epochs=3, embed_dim=16, n_folds=2)
    cells = grid.grid_configs(base, ["hcld", "orth"], ["lstm"], [1], [0, 4], "/tmp/runs")
    assert [(c.variant, c.seed) for c in cells] == [("hcld", 0), ("hcld", 4), ("orth", 0),
                                                     ("orth", 4)]
    cfg = cells[0]
    assert cfg.speaker_branch and cfg.w_icld == 1.0 and cfg.w_ce_speaker == 1.0
    assert (cfg.max_epochs, cfg.embed_dim, cfg.fold, cfg.emotion_arch) == (3, 16, 1, "lstm")
    assert cfg.speaker_arch is None and cfg.out_dir == "/tmp/runs"
    assert cells[2].w_orth == 1.0 and cells[2].w_supcon == 0.0
    for name in VARIANTS:
        assert grid.grid_configs(base, [name], ["cnn"], 1)[0].variant == name
    # a reading given as an override reaches every variant, and names the runs it changes
    read = grid.grid_configs(base, ["emo_only", "hcld"], ["cnn"], 1,
                             overrides={"icld_margin": 0.2})
    assert [c.icld_margin for c in read] == [0.2, 0.2]
    assert read[0].resolved_run_name == "emo_only__cnn__paper-fold0__seed0"
    assert read[1].resolved_run_name.endswith("__icld_margin=0.2")
    with pytest.raises(HcldError, match="unknown variant"):
        grid.grid_configs(base, ["hcld_v2"], ["cnn"], 1)
    with pytest.raises(HcldError, match="unknown architecture"):
        grid.grid_configs(base, ["hcld"], ["gru"], 1)
    with pytest.raises(HcldError, match="outside"):
        grid.grid_configs(base, ["hcld"], ["cnn"], [2])


def test_run_grid_trains_each_cell_once_and_resumes(tmp_path, monkeypatch):
    calls = []
    allowed = {"flag": False}

    def fake_train_run(config):
        run = tmp_path / config.resolved_run_name
        if (run / "metrics.json").is_file():
            return json.loads((run / "metrics.json").read_text())
        if config.variant == "hcld" and config.emotion_arch == "lstm" and not allowed["flag"]:
            raise RuntimeError("killed")
        calls.append(config.resolved_run_name)
        m = _metrics(config.variant, config.emotion_arch, config.fold, 0.5)
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(m))
        return m

    monkeypatch.setattr(grid, "train_run", fake_train_run)
    base = RunConfig(n_folds=2, out_dir=str(tmp_path))
    with pytest.raises(TaskFailed, match="killed") as err:
        grid.run_grid(base, ["emo_only", "hcld"], ["cnn", "lstm"], 2, progress=False,
                      engine="serial")
    assert any("hcld grid" in note for note in err.value.__notes__)
    # the slow architecture goes first, fold by fold: fold 0's emo_only LSTM run finished
    # before hcld's failed
    assert calls == ["emo_only__lstm__paper-fold0__seed0"]
    allowed["flag"] = True
    df = grid.run_grid(base, ["emo_only", "hcld"], ["cnn", "lstm"], 2, progress=True,
                       engine="serial")
    assert len(calls) == 8 == len(set(calls))  # every run trained exactly once
    assert len(df) == 8 and list(df["variant"].unique()) == ["emo_only", "hcld"]
    assert df["emo_ua"].tolist() == [50.0] * 8


def test_progress_is_one_bar_in_a_notebook_and_a_line_per_run_elsewhere(tmp_path, monkeypatch,
                                                                        capsys):
    def fake_train_run(config):
        run = tmp_path / config.resolved_run_name
        m = _metrics(config.variant, config.emotion_arch, config.fold, 0.5)
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(m))
        return m

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.postfix, self.closed = kwargs, 0, "", False

        def set_postfix_str(self, text, refresh=True):
            self.postfix = text

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    bars = []
    monkeypatch.setattr(grid, "train_run", fake_train_run)
    monkeypatch.setattr(grid.runtime, "in_notebook", lambda: True)
    monkeypatch.setattr(grid.runtime, "progress", lambda **kw: bars.append(Bar(**kw)) or bars[-1])
    base = RunConfig(n_folds=2, out_dir=str(tmp_path))
    grid.run_configs(grid.grid_configs(base, ["emo_only", "hcld"], ["cnn"], [0, 1]),
                     engine="serial", desc="readings")
    assert len(bars) == 1 and bars[0].n == 4 and bars[0].closed
    assert bars[0].kwargs == {"total": 4, "desc": "readings", "unit": "run"}
    assert bars[0].postfix.endswith("emo UA 50.0")
    assert capsys.readouterr().out == ""  # nothing printed per run
    monkeypatch.setattr(grid.runtime, "in_notebook", lambda: False)
    grid.run_configs(grid.grid_configs(base, ["orth"], ["cnn"], [0, 1]), engine="serial",
                     desc="readings")
    lines = capsys.readouterr().out.splitlines()
    assert len(bars) == 1 and len(lines) == 2
    assert lines[0].startswith("[readings   1/2] orth__cnn__paper-fold0__seed0")


def test_finished_grid_reads_runs_and_names_the_missing_ones(tmp_path):
    _write_runs(tmp_path, [("hcld", "cnn", 0, 0.6), ("emo_only", "cnn", 0, 0.5)])
    base = RunConfig(n_folds=2, out_dir=str(tmp_path))
    df = grid.finished_grid(grid.grid_configs(base, ["emo_only", "hcld"], ["cnn"], [0]))
    row = df.set_index("variant").loc["hcld"]
    assert row["emo_ua"] == pytest.approx(60.0) and row["emo_wa"] == pytest.approx(62.0)
    assert row["spk_ua"] == pytest.approx(80.0) and row["arch"] == "cnn"
    assert row["run_dir"] == str(tmp_path / "hcld__cnn__paper-fold0__seed0")
    assert math.isnan(df.set_index("variant").loc["emo_only", "spk_ua"])
    with pytest.raises(HcldError, match=r"1 of 2 runs have not finished .*orth__cnn.*notebook 04"):
        grid.finished_grid(grid.grid_configs(base, ["hcld", "orth"], ["cnn"], [0]))


def test_loso_speaker_metrics_come_from_the_speaker_test_part():
    m = _metrics("hcld", "cnn", 0, 0.5, protocol="loso")
    m["test"] = {"emotion": {"wa": 0.4, "ua": 0.45}, "speaker": None}
    row = tables.metrics_row(m)
    assert row["emo_ua"] == pytest.approx(45.0) and row["spk_ua"] == pytest.approx(80.0)


def _runs() -> pd.DataFrame:
    rows = []
    for variant, base_ua in [("hcld", 0.60), ("emo_only", 0.50), ("orth", 0.55)]:
        for arch in ["transformer", "cnn"]:
            for fold, jitter in [(0, -0.01), (1, 0.01)]:
                spk = None if variant == "emo_only" else 0.8
                metrics = _metrics(variant, arch, fold, base_ua + jitter, spk)
                rows.append(tables.metrics_row(metrics))
    return pd.DataFrame(rows)


def test_summary_is_mean_and_std_over_folds_in_table_two_layout():
    df = _runs()
    stats = tables.summary_stats(df)
    hcld = stats[(stats.variant == "hcld") & (stats.arch == "cnn")].iloc[0]
    assert hcld["emo_ua_mean"] == pytest.approx(60.0)
    assert hcld["emo_ua_std"] == pytest.approx(np.std([59.0, 61.0], ddof=1))
    assert hcld["n_runs"] == 2
    # the 95 % interval of the mean over the two runs: t_1 = 12.706, std 1.414 / sqrt(2)
    assert hcld["emo_ua_ci"] == pytest.approx(12.706204736 * np.std([59.0, 61.0], ddof=1)
                                              / np.sqrt(2))
    table = tables.summary_table(df)
    assert list(table.index) == ["emo_only", "orth", "hcld"]  # the paper's row order
    assert list(table.columns) == ["cnn", "transformer"]  # ARCHS order
    assert table.loc["hcld", "cnn"] == "62.0 ± 1.4 / 60.0 ± 1.4 (spk 81.0 ± 0.0 / 80.0 ± 0.0)"
    assert table.loc["emo_only", "cnn"] == "52.0 ± 1.4 / 50.0 ± 1.4"  # no speaker numbers
    with pytest.raises(HcldError, match="no finished runs"):
        tables.summary_stats(df.iloc[:0])


def test_side_by_side_names_the_protocol_and_holds_the_papers_cells():
    summary = tables.summary_table(_runs())
    table = tables.side_by_side(summary, "loso", "quick", "synthetic", "fbank")
    assert "protocol=loso" in table.attrs["title"] and "corpus=synthetic" in table.attrs["title"]
    ours = "cnn ours (synthetic/fbank/loso/quick)"
    paper = f"cnn paper ({tables.PAPER_SETTING})"
    assert list(table.columns[:2]) == [ours, paper]
    assert table.loc["hcld", paper] == "75.52 / 76.08 (spk 75.70 / 75.90)"
    assert table.loc["emo_only", paper] == "70.84 / 71.61"
    assert table.loc["hcld_wo_lcl", ours] == "not run"  # a paper row we did not run


def test_comparison_gives_deltas_to_the_paper():
    comp = tables.comparison(_runs()).set_index(["variant", "arch"])
    assert comp.loc[("hcld", "cnn"), "delta_emo_ua"] == pytest.approx(60.0 - 76.08)


def test_markdown_renderer_and_table_writer(tmp_path):
    df = pd.DataFrame({"name": ["a|b", "c", "d"], "value": [1.234, float("nan"), 500.0]})
    df = df.set_index("name")
    md = tables.to_markdown(df)
    lines = md.strip().splitlines()
    assert lines[0] == "| name | value |"
    assert lines[1] == "| --- | ---: |"
    assert lines[2] == "| a\\|b | 1.23 |" and lines[3] == "| c |  |" and lines[4] == "| d | 500 |"
    csv, mdp = tables.write_tables(df, tmp_path, "t", "A title (profile=quick)", notes=["a note"],
                                 provenance={"profile": "quick", "protocol": "paper"})
    text = mdp.read_text()
    assert text.startswith("## A title (profile=quick)\n") and "- a note" in text
    back = pd.read_csv(csv)
    assert list(back.columns) == ["name", "value", "profile", "protocol"]
    assert back["profile"].tolist() == ["quick"] * 3
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_the_corpus_note_says_what_the_numbers_are_not():
    exp = SimpleNamespace(dataset="synthetic", protocol="paper", corpus_name="x",
                          profile="quick", backbone="fbank")
    note = report.corpus_note(exp)
    assert "not from IEMOCAP" in note and "random 80/20" in note
