"""The method on one batch: masks, values and where each term's gradient goes."""

from __future__ import annotations

import pytest
import torch
from helpers import fbank_cache

from hcld_lib.training.config import RunConfig
from hcld_lib.training.one_batch import gradient_reach, one_batch


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return fbank_cache(tmp_path_factory.mktemp("one-batch"), n_utterances=80)


def _config(cache_path, **kw):
    return RunConfig(variant="hcld", features=cache_path, out_dir="unused", n_folds=2,
                     embed_dim=8, hidden_dim=8, n_layers=1, frame_stride=4, batch_size=16,
                     lcl_text_encoder="learned", device="cpu", **kw)


def test_one_batch_holds_the_pairs_and_the_objectives_values(cache_path):
    one = one_batch(_config(cache_path))
    e, s = one.emotion, one.speaker
    same_e, same_s = e[:, None] == e[None, :], s[:, None] == s[None, :]
    assert torch.equal(one.positive, same_s & ~same_e)
    assert torch.equal(one.negative, ~same_s & same_e)
    assert one.positive.any() and one.negative.any()  # the sampler's guarantee
    assert set(one.values) == {"ce_emotion", "ce_speaker", "icld_pos", "icld_neg", "icld",
                               "supcon", "lcl", "loss"}
    weighted = sum(one.values[k] for k in ("ce_emotion", "ce_speaker", "icld", "supcon", "lcl"))
    assert one.values["loss"] == pytest.approx(weighted, rel=1e-6)


def test_speaker_terms_reach_x_e_only_through_a_shared_encoder(cache_path):
    separate = gradient_reach(one_batch(_config(cache_path)))
    assert separate.loc["ce_speaker", "emotion_encoder"] == 0.0
    assert separate.loc["icld: icld_neg", "emotion_encoder"] == 0.0
    assert separate.loc["icld: icld_pos", "emotion_encoder"] > 0
    assert separate.loc["lcl", "lcl (its own network)"] > 0
    shared = gradient_reach(one_batch(_config(cache_path, branches="shared")))
    assert shared.loc["ce_speaker", "encoder"] > 0 and shared.loc["icld: icld_neg", "encoder"] > 0
