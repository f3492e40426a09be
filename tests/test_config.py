"""The run configuration: named variants, profiles and refused values."""

from __future__ import annotations

import pytest

from hcld_lib.config import PAPER_VARIANTS, PROFILES, VARIANTS, RunConfig, profile_run_overrides
from hcld_lib.io import HcldError


def test_defaults_follow_the_paper_and_the_spec_readings():
    c = RunConfig()
    assert (c.lr, c.batch_size, c.epochs, c.warmup_epochs, c.embed_dim) == (5e-4, 32, 100, 5, 256)
    assert (c.margin, c.temperature) == (0.0, 0.07)
    assert (c.pos_space, c.hinge, c.supcon_space, c.lcl_include_self) == (
        "emotion", "text", "emotion", False)
    assert (c.w_cld, c.w_supcon, c.w_label, c.w_orth) == (1.0, 1.0, 1.0, 0.0)


def test_named_variants_switch_the_right_terms():
    assert RunConfig.for_variant("emo_only").speaker_branch is False
    assert RunConfig.for_variant("orth").w_orth == 1.0
    assert RunConfig.for_variant("orth").w_cld == 0.0
    assert RunConfig.for_variant("hcld_wo_supcon").w_supcon == 0.0
    assert RunConfig.for_variant("hcld_wo_lcl").w_label == 0.0
    assert RunConfig.for_variant("hcld_pos_speaker").pos_space == "speaker"
    assert RunConfig.for_variant("hcld_printed_hinge").hinge == "printed"
    assert RunConfig.for_variant("hcld_supcon_speaker").supcon_space == "speaker"
    assert RunConfig.for_variant("hcld_lcl_self").lcl_include_self is True
    assert set(PAPER_VARIANTS) <= set(VARIANTS)


def test_overrides_win_over_the_variant():
    assert RunConfig.for_variant("orth", w_orth=0.5, epochs=3).w_orth == 0.5


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(variant="hcdl"), "unknown variant 'hcdl'"),
        (dict(protocol="random"), "protocol='random'"),
        (dict(emotion_arch="gru"), "emotion_arch='gru'"),
        (dict(hinge="soft"), "hinge='soft'"),
        (dict(train_fraction=0.0), "train_fraction=0.0"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs, words):
    with pytest.raises(HcldError, match=words.replace("(", r"\(")):
        RunConfig(**kwargs)


def test_run_names_differ_by_what_defines_a_run():
    a = RunConfig.for_variant("hcld", fold=0)
    names = {
        a.resolved_run_name,
        a.replace(fold=1).resolved_run_name,
        a.replace(emotion_arch="lstm").resolved_run_name,
        a.replace(speaker_arch="transformer").resolved_run_name,
        a.replace(protocol="loso").resolved_run_name,
        a.replace(seed=1).resolved_run_name,
        a.replace(train_fraction=0.25).resolved_run_name,
        RunConfig.for_variant("orth").resolved_run_name,
    }
    assert len(names) == 8


def test_profiles_hold_only_known_run_fields_or_corpus_settings():
    for name in PROFILES:
        run = profile_run_overrides(name)
        RunConfig(**run)  # every run field of a profile is valid
    assert profile_run_overrides("paper")["epochs"] == 100
    with pytest.raises(HcldError, match="unknown profile 'fast'"):
        profile_run_overrides("fast")
