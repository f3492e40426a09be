"""The run configuration: variants own their switches, readings name themselves, bad values are
refused by name; profiles separate corpus, run and grid settings."""

from __future__ import annotations

import re

import pytest

from hcld_lib.experiments.params import PROFILES, profile, setup
from hcld_lib.io import HcldError
from hcld_lib.method.variants import PAPER_VARIANTS, VARIANT_FIELDS, VARIANTS, variant_settings
from hcld_lib.training.config import RunConfig


def test_defaults_follow_the_paper_and_the_readings_of_the_open_points():
    c = RunConfig()
    assert (c.lr, c.batch_size, c.max_epochs, c.warmup_epochs, c.embed_dim) == (
        5e-4, 32, 100, 5, 256)
    assert (c.icld_margin, c.temperature, c.branches) == (0.0, 0.07, "separate")
    assert (c.icld_pos_space, c.icld_hinge, c.supcon_space, c.lcl_include_self) == (
        "emotion", "below", "emotion", False)
    assert (c.w_icld, c.w_supcon, c.w_lcl, c.w_orth) == (1.0, 1.0, 1.0, 0.0)
    assert (c.w_adversarial, c.w_mi) == (0.0, 0.0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_variant_gives_exactly_its_settings(name):
    config = RunConfig(variant=name)
    assert {k: getattr(config, k) for k in VARIANT_FIELDS} == variant_settings(name)


def test_named_variants_switch_the_right_terms():
    emo = RunConfig(variant="emo_only")
    assert emo.speaker_branch is False and emo.w_ce_speaker == 0.0
    assert (emo.w_icld, emo.w_supcon, emo.w_lcl, emo.w_orth) == (0.0, 0.0, 0.0, 0.0)
    assert emo.resolved_run_name == "emo_only__cnn__paper-fold0__seed0"
    orth = RunConfig(variant="orth")
    assert (orth.w_orth, orth.w_icld, orth.w_supcon, orth.w_lcl) == (1.0, 0.0, 0.0, 0.0)
    adversarial, mi = RunConfig(variant="adversarial"), RunConfig(variant="mi")
    assert (adversarial.w_adversarial, adversarial.w_ce_speaker, adversarial.w_icld) == (1, 1, 0)
    assert (mi.w_mi, mi.w_ce_speaker, mi.w_orth) == (1.0, 1.0, 0.0)
    assert RunConfig(variant="hcld_pos_speaker").icld_pos_space == "speaker"
    assert RunConfig(variant="hcld_printed_hinge").icld_hinge == "above"
    assert RunConfig(variant="hcld_lcl_self").lcl_include_self is True
    assert set(PAPER_VARIANTS) <= set(VARIANTS)


def test_replacing_the_variant_brings_all_of_its_settings():
    hcld = RunConfig(variant="hcld", max_epochs=3)
    emo = hcld.replace(variant="emo_only")
    assert emo.speaker_branch is False and emo.w_icld == 0.0 and emo.max_epochs == 3
    back = emo.replace(variant="hcld")
    assert back.to_dict() == hcld.to_dict()
    # a switch given with the new variant is kept
    assert hcld.replace(variant="orth", w_orth=0.5).w_orth == 0.5
    assert RunConfig(variant="orth", w_orth=0.5).w_orth == 0.5


def test_a_reading_names_itself_only_when_a_term_reads_it():
    hcld = RunConfig(variant="hcld")
    assert hcld.departures() == {}
    assert hcld.replace(icld_margin=0.2).resolved_run_name == (
        "hcld__cnn__paper-fold0__seed0__icld_margin=0.2")
    assert hcld.replace(branches="shared").departures() == {"branches": "shared"}
    # the orth form is not read by HCLD (w_orth = 0), the margin not by EMO-only
    assert hcld.replace(orth_form="batch").resolved_run_name == hcld.resolved_run_name
    emo = RunConfig(variant="emo_only")
    assert emo.replace(icld_margin=0.5).resolved_run_name == emo.resolved_run_name
    assert emo.replace(icld_margin=0.5).result_key() == emo.result_key()
    assert RunConfig(variant="orth", orth_form="batch").departures() == {"orth_form": "batch"}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(variant="hcdl"), "unknown variant 'hcdl'"),
        (dict(protocol="random"), "protocol='random'"),
        (dict(emotion_arch="gru"), "emotion_arch='gru'"),
        (dict(icld_hinge="soft"), "icld_hinge='soft'"),
        (dict(branches="twin"), "branches='twin'"),
        (dict(train_fraction=0.0), "train_fraction=0.0"),
        (dict(w_ce_emotion=0.0), "w_ce_emotion must be > 0"),
        (dict(lr=0.0), "lr=0.0 must be a finite number in (0, inf)"),
        (dict(lr=float("nan")), "lr=nan"),
        (dict(embed_dim=0), "embed_dim=0 must be an int in [1, inf)"),
        (dict(max_frames=0), "max_frames=0 must be an int in [1, inf) or None"),
        (dict(max_epochs="3"), "max_epochs='3' must be an int"),
        (dict(icld_margin=float("nan")), "icld_margin=nan"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(lcl_include_self="yes"), "lcl_include_self='yes' must be a bool"),
        (dict(device="cuda:7"), "device='cuda:7': this machine has"),
        (dict(stop_at_plateau=True, val_fraction=0.0), "val_fraction=0 carves none"),
        (dict(branches="shared", speaker_arch="lstm"), "branches='shared' has one encoder"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(HcldError, match=re.escape(words)):
        RunConfig(**kwargs)


def test_run_names_differ_by_what_defines_a_run():
    a = RunConfig(variant="hcld", fold=0)
    names = {
        a.resolved_run_name,
        a.replace(fold=1).resolved_run_name,
        a.replace(emotion_arch="lstm").resolved_run_name,
        a.replace(speaker_arch="transformer").resolved_run_name,
        a.replace(protocol="loso").resolved_run_name,
        a.replace(seed=1).resolved_run_name,
        a.replace(train_fraction=0.25).resolved_run_name,
        a.replace(temperature=0.2).resolved_run_name,
        RunConfig(variant="orth").resolved_run_name,
    }
    assert len(names) == 9


def test_profiles_separate_corpus_run_and_grid_settings():
    for prof in PROFILES.values():
        RunConfig(**prof.run)  # every run field of a profile is valid
        assert {"dataset", "backbone"} <= set(prof.corpus)
        assert prof.folds >= 1 and prof.seeds
    assert profile("paper").run["max_epochs"] == 100
    with pytest.raises(HcldError, match="unknown profile 'fast'"):
        profile("fast")


def test_setup_reads_the_knobs_of_a_namespace_and_names_the_experiment(tmp_path):
    exp = setup({"profile": "quick", "folds": 3, "seeds": [0, 1], "unrelated": 1},
                work_dir=str(tmp_path / "w"), results_dir=str(tmp_path / "r"))
    assert exp.folds == [0, 1, 2] and exp.seeds == [0, 1]
    assert not exp.is_default  # three folds and two seeds are not the committed figures
    assert setup({"profile": "quick", "unrelated": 1}, work_dir=str(tmp_path / "w")).is_default
    assert exp.name == "synthetic-n600-seed0__fbank__paper__quick"
    assert exp.results_dir == tmp_path / "r" / exp.name
    other = setup(protocol="loso", overrides={"embed_dim": 32}, work_dir=str(tmp_path))
    assert not other.is_default and other.name.startswith("synthetic-n600-seed0__fbank__loso")
    assert other.run_settings["embed_dim"] == 32
    with pytest.raises(HcldError, match="not RunConfig fields"):
        setup(overrides={"embed_dimm": 32})
    with pytest.raises(HcldError, match="needs iemocap_root"):
        setup(dataset="iemocap")


@pytest.mark.parametrize("knob, value", [("folds", 2), ("seeds", [1]), ("max_epochs", 1),
                                         ("variants", ["hcld"]), ("archs", ["cnn"]),
                                         ("n_utterances", 100), ("seed", 3),
                                         ("protocol", "loso"), ("overrides", {"lr": 0.1})])
def test_only_the_default_experiment_writes_the_committed_figures(tmp_path, knob, value):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 1))
    folders = dict(work_dir=str(tmp_path / "w"), results_dir=str(tmp_path / "r"))
    default = setup(figures_dir=str(tmp_path / "f"), **folders)
    assert default.save_figure(fig, "x") == default.results_dir / "x.png"
    assert (tmp_path / "f" / "x.png").read_bytes() == (default.results_dir / "x.png").read_bytes()
    other = setup(figures_dir=str(tmp_path / "g"), **folders, **{knob: value})
    other.save_figure(fig, "x")
    assert (other.results_dir / "x.png").is_file() and not (tmp_path / "g").exists()
    quiet = setup(figures_dir=None, **folders)
    assert quiet.is_default and quiet.figures_dir is None
    quiet.save_figure(fig, "y")
    assert not (tmp_path / "f" / "y.png").exists()
    plt.close(fig)


def test_setup_refuses_more_folds_than_the_split_and_keeps_its_folders_in_the_repository(
        tmp_path, monkeypatch):
    from hcld_lib.experiments.params import REPO

    with pytest.raises(HcldError, match="folds=7: the data is split into n_folds=5"):
        setup(folds=7, work_dir=str(tmp_path / "w"), results_dir=str(tmp_path / "r"))
    assert setup(folds=7, overrides={"n_folds": 7}, work_dir=str(tmp_path / "w"),
                 results_dir=str(tmp_path / "r")).folds == list(range(7))
    # the default folders are the repository's, from wherever setup is called
    monkeypatch.chdir(tmp_path)
    exp = setup()
    assert (exp.work_dir, exp.results_root, exp.figures_dir) == (
        REPO / "runs", REPO / "results", REPO / "figures")
    # other relative folders follow the current directory; an unwritable one is said now
    assert setup(work_dir="mine", figures_dir=None).work_dir == tmp_path / "mine"
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(HcldError, match="work_dir .* is a file, not a folder"):
        setup(work_dir="taken")


def test_a_backbone_layer_names_its_experiment_and_the_profile_names_a_pretrained_one(tmp_path):
    folders = dict(work_dir=str(tmp_path / "w"), results_dir=str(tmp_path / "r"))
    main = setup(**folders)
    assert main.layer == "last" and main.backbone_name == "fbank"
    other = main.pretrained(archs=["cnn"])
    assert (other.backbone, other.layer, other.archs) == ("whisper-tiny.en", 1, ["cnn"])
    assert other.name == "synthetic-n600-seed0__whisper-tiny.en-L1__paper__quick"
    assert "backbone=whisper-tiny.en/layer 1" in other.caption and not other.is_default
    assert other.pretrained() is None  # already on it
    assert setup(profile="paper", dataset="iemocap", iemocap_root=str(tmp_path),
                 **folders).pretrained() is None


def test_the_baselines_beyond_the_paper_run_on_the_profile_s_baseline_archs(tmp_path,
                                                                             monkeypatch):
    from hcld_lib.experiments.params import Experiment

    # the grid's cells without a feature cache: every run of the experiment's shared settings
    monkeypatch.setattr(Experiment, "config", lambda self, *a, **k: self.base_config())
    folders = dict(work_dir=str(tmp_path / "w"), results_dir=str(tmp_path / "r"))

    def archs_of(exp):
        cells = {(c.variant, c.emotion_arch) for c in exp.grid_configs()}
        return ({a for v, a in cells if v in ("adversarial", "mi")},
                {a for v, a in cells if v == "hcld"})

    assert archs_of(setup({"profile": "quick"}, **folders)) == (
        {"cnn"}, {"cnn", "lstm", "transformer"})
    # archs given: the baselines run on every one of them
    assert archs_of(setup({"profile": "quick", "archs": ["cnn", "lstm"]}, **folders)) == (
        {"cnn", "lstm"}, {"cnn", "lstm"})
    assert archs_of(setup({"profile": "paper", "dataset": "synthetic", "backbone": "fbank"},
                          **folders)) == ({"cnn", "lstm", "transformer"},) * 2
