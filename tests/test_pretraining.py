"""Cluster-based pretraining: pairs, loss, pretraining on synthetic features, budget runs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import all_layer_cache

from hcld_lib.io import HcldError
from hcld_lib.method.losses import cluster_contrastive_loss, cluster_pairs, supcon_loss
from hcld_lib.training.config import RunConfig
from hcld_lib.training.fold import fold_split
from hcld_lib.training.pretrain import fold_pseudo_labels, pretrain_emotion_encoder

TINY = dict(
    embed_dim=16,
    hidden_dim=16,
    n_layers=1,
    frame_stride=4,
    batch_size=16,
    lr=3e-3,
    warmup_epochs=0,
    lcl_text_encoder="learned",
    val_fraction=0.2,
    n_folds=2,
    device="cpu",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- pairs and loss ---------------------------------------------------------------------------


def test_cluster_pairs_by_hand():
    speaker = torch.tensor([0, 0, 0, 0, 1, 1])
    cluster = torch.tensor([0, 0, 1, 1, 0, 0])
    pos, valid = cluster_pairs(speaker, cluster)
    expected_pos = np.zeros((6, 6), bool)
    for i, j in [(0, 1), (2, 3), (4, 5)]:
        expected_pos[i, j] = expected_pos[j, i] = True
    np.testing.assert_array_equal(pos.numpy(), expected_pos)
    # contrast set: the same speaker only, self excluded
    expected_valid = np.zeros((6, 6), bool)
    expected_valid[:4, :4] = True
    expected_valid[4:, 4:] = True
    np.fill_diagonal(expected_valid, False)
    np.testing.assert_array_equal(valid.numpy(), expected_valid)
    # negatives = valid and not positive: same speaker, other cluster
    neg = (valid & ~pos).numpy()
    assert neg[0, 2] and neg[0, 3] and not neg[0, 4] and not neg[4, 0]
    # the switch adds every other speaker as a negative (still never self)
    pos2, valid2 = cluster_pairs(speaker, cluster, other_speakers_negative=True)
    np.testing.assert_array_equal(pos2.numpy(), expected_pos)
    np.testing.assert_array_equal(valid2.numpy(), ~np.eye(6, dtype=bool))


def test_cluster_ids_need_only_be_unique_within_speaker():
    # speaker 0 and speaker 1 both have a "cluster 0": never positives of each other
    pos, _ = cluster_pairs(np.array(["a", "a", "b", "b"]), np.array([0, 1, 0, 1]))
    assert not pos.any()


def test_loss_is_supcon_for_one_speaker_and_with_the_switch():
    torch.manual_seed(0)
    z = torch.randn(10, 8)
    cluster = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    one_speaker = torch.zeros(10, dtype=torch.long)
    got = cluster_contrastive_loss(z, one_speaker, cluster, temperature=0.5)
    assert torch.allclose(got, supcon_loss(z, cluster, temperature=0.5), atol=1e-6)
    # two speakers + the switch: SupCon on the (speaker, cluster) labels
    speaker = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    got = cluster_contrastive_loss(z, speaker, cluster, 0.5, other_speakers_negative=True)
    assert torch.allclose(got, supcon_loss(z, speaker * 10 + cluster, 0.5), atol=1e-6)


def test_loss_value_by_hand():
    # speaker 0: anchors 0, 1 share a cluster; 2 is the other cluster. speaker 1: one utterance.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    speaker = torch.tensor([0, 0, 0, 1])
    cluster = torch.tensor([0, 0, 1, 0])
    tau = 1.0
    # anchor 0: P = {1} (cos 0.6), A = {1, 2} (cos 0.6, 0.0); anchor 1: P = {0}, A = {0, 2}
    # (cos 0.6, 0.8); anchors 2 and 3 have no positive.
    l0 = -np.log(np.exp(0.6) / (np.exp(0.6) + np.exp(0.0)))
    l1 = -np.log(np.exp(0.6) / (np.exp(0.6) + np.exp(0.8)))
    got = cluster_contrastive_loss(z, speaker, cluster, temperature=tau)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # with the switch, utterance 3 (another speaker) joins both denominators (cos -1, -0.6)
    l0s = -np.log(np.exp(0.6) / (np.exp(0.6) + np.exp(0.0) + np.exp(-1.0)))
    l1s = -np.log(np.exp(0.6) / (np.exp(0.6) + np.exp(0.8) + np.exp(-0.6)))
    got = cluster_contrastive_loss(z, speaker, cluster, tau, other_speakers_negative=True)
    assert got.item() == pytest.approx((l0s + l1s) / 2, rel=1e-6)


def test_no_positive_gives_connected_zero():
    z = torch.randn(3, 4, requires_grad=True)
    loss = cluster_contrastive_loss(z, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.all(z.grad == 0)


def test_loss_rejects_mismatched_batch():
    with pytest.raises(HcldError, match=r"\[B, E\]"):
        cluster_contrastive_loss(torch.randn(4, 3), torch.zeros(5), torch.zeros(5))


# --- pretraining on synthetic-corpus features -------------------------------------------------


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory) -> str:
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.extract import extract_features

    root = tmp_path_factory.mktemp("pre_corpus")
    table = synthesize_corpus(root / "corpus", n_utterances=100, seed=0, emotion_strength=1.0)
    cache = extract_features(table, "fbank", root / "cache", max_seconds=3.0, progress=False)
    return str(cache.path)


def _config(cache_path: str, out_dir, variant: str = "emo_only", **kw) -> RunConfig:
    return RunConfig(variant=variant, features=cache_path, out_dir=str(out_dir),
                     **{**TINY, **kw})


def _stand_in_embeddings(cache_path: str) -> tuple[np.ndarray, list[str]]:
    """Cheap 'speaker embeddings' for the tests: each utterance's mean log-mel frame."""
    from hcld_lib.features.cache import open_cache

    cache = open_cache(cache_path)
    x = np.stack([cache.array[i, : max(int(cache.lengths[i]), 1)].astype(np.float32).mean(0)
                  for i in range(len(cache))])
    return x, list(cache.ids)


@pytest.fixture(scope="module")
def pretrained(cache_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    config = _config(cache_path, out)
    emb, ids = _stand_in_embeddings(cache_path)
    pseudo = fold_pseudo_labels(config, emb, ids, k=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pretrain_emotion_encoder(config, pseudo, out / "enc.pt", epochs=8)
    result["warnings"] = [str(w.message) for w in caught]
    return config, pseudo, result


def test_pseudo_labels_cover_the_training_and_validation_parts_not_the_test_part(pretrained):
    config, pseudo, result = pretrained
    fold = fold_split(config)[2]
    seen = np.concatenate([fold.train, fold.val])
    assert np.all(pseudo[seen] >= 0)
    assert np.all(pseudo[fold.test] == -1)  # test utterances are never seen
    assert len(np.unique(pseudo[seen])) <= 10 * 2  # 10 speakers x k=2
    # it trains on the training part and only measures the validation part
    assert result["meta"]["n_utterances"] == len(fold.train)
    assert result["meta"]["n_held_out"] == len(fold.val)


def test_held_out_cluster_loss_by_hand():
    """Two held-out anchors against three training vectors (unit length), tau = 1.
    Anchor 0 (speaker 0, cluster 0): contrast set = training rows 0, 1 (speaker 0), positive
    row 0, so l_0 = -log(e^{z.t0} / (e^{z.t0} + e^{z.t1})) with z.t0 = 1, z.t1 = 0.
    Anchor 1 (speaker 1, cluster 5): no training row in its cluster, left out. With other
    speakers as negatives, row 2 (z.t2 = -1) joins anchor 0's contrast set."""
    from hcld_lib.training.pretrain import held_out_cluster_loss

    held = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    args = (held, train, [0, 1], [0, 0, 1], [0, 5], [0, 1, 2], 1.0)
    e = np.e
    assert held_out_cluster_loss(*args).item() == pytest.approx(-np.log(e / (e + 1)))
    assert held_out_cluster_loss(*args, other_speakers_negative=True).item() == pytest.approx(
        -np.log(e / (e + 1 + 1 / e)))
    # nobody has a positive: 0, not NaN
    assert held_out_cluster_loss(held, train, [0, 1], [0, 0, 1], [7, 5], [0, 1, 2],
                                 1.0).item() == 0.0


def test_pretraining_stops_at_the_held_out_plateau_and_keeps_its_lowest_epoch(
        cache_path, tmp_path):
    config = _config(cache_path, tmp_path, stop_at_plateau=True, patience=2, plateau_window=1,
                     min_epochs=3, lr=1e-2)
    emb, ids = _stand_in_embeddings(cache_path)
    pseudo = fold_pseudo_labels(config, emb, ids, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pretrain_emotion_encoder(config, pseudo, tmp_path / "enc.pt", epochs=40)
    h, meta = res["history"], res["meta"]
    held = h["val_cluster_loss"].to_numpy()
    assert np.all(np.isfinite(held))
    # patience 2 on the raw held-out curve: it stops two epochs after its lowest point
    assert meta["converged"] and meta["stop_reason"] == "plateau"
    assert meta["epochs_trained"] == len(h) < 40
    best = int(np.argmin(held)) + 1
    assert meta["best_epoch"] == best and len(h) - best == 2
    assert meta["held_out_loss"] == pytest.approx(held.min())
    # the chance level: log of the contrast set's size (the anchor's speaker's training rows),
    # over the held-out anchors that have a positive (a training row of their cluster)
    fold = fold_split(config)[2]
    speaker = fold_split(config)[1]["speaker"].to_numpy()
    sizes = [np.sum(speaker[fold.train] == speaker[i]) for i in fold.val
             if np.any(pseudo[fold.train] == pseudo[i])]
    assert meta["held_out_chance"] == pytest.approx(np.mean(np.log(sizes)))


def test_pretraining_lowers_its_loss(pretrained):
    config, pseudo, result = pretrained
    h = result["history"]
    assert list(h["epoch"]) == list(range(1, 9))
    assert np.all(np.isfinite(h["loss_cluster"]))
    assert h["loss_cluster"].iloc[-3:].mean() < h["loss_cluster"].iloc[0] - 0.05
    # the sampler gives a positive to every anchor whose cluster is not a singleton
    labels = pseudo[fold_split(config)[2].train]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    can_have = float(np.mean(counts[inverse] >= 2))
    # (averaged over batches and epochs: a small last batch may hold more singletons)
    assert h["loss_with_positive"].mean() >= can_have - 0.05
    if can_have < 1.0:  # singletons are reported in terms of clusters, not emotions
        alone = int(np.sum(counts[inverse] < 2))
        assert any(f"{alone} of {len(labels)} utterances are alone" in w
                   for w in result["warnings"])
        assert not any("'emotion' positive" in w for w in result["warnings"])
    assert result["path"].is_file() and not result["skipped"]


def test_pretraining_is_skipped_when_the_file_exists(pretrained, monkeypatch):
    config, pseudo, result = pretrained
    import hcld_lib.training.pretrain as pre

    monkeypatch.setattr(pre, "fold_split", lambda *a: (_ for _ in ()).throw(AssertionError))
    again = pretrain_emotion_encoder(config, pseudo, result["path"], epochs=8)
    assert again["skipped"]
    pd.testing.assert_frame_equal(again["history"], result["history"])


def test_speaker_ce_multitask(cache_path, tmp_path):
    config = _config(cache_path, tmp_path)
    emb, ids = _stand_in_embeddings(cache_path)
    pseudo = fold_pseudo_labels(config, emb, ids, k=2)
    res = pretrain_emotion_encoder(config, pseudo, tmp_path / "enc.pt", epochs=2,
                                   speaker_ce=True, other_speakers_negative=True)
    h = res["history"]
    assert np.all(np.isfinite(h["loss_speaker_ce"]))
    assert np.allclose(h["loss"], h["loss_cluster"] + h["loss_speaker_ce"], rtol=1e-5)
    assert res["meta"]["speaker_ce"] and res["meta"]["other_speakers_negative"]


def test_pseudo_labels_of_wrong_length_are_an_error(cache_path, tmp_path):
    config = _config(cache_path, tmp_path)
    with pytest.raises(HcldError, match="one label per row"):
        pretrain_emotion_encoder(config, np.zeros(7, np.int64), tmp_path / "x.pt", epochs=1)


def _starting_state(monkeypatch) -> dict:
    """Patch training so that it records the model's state when training starts."""
    import hcld_lib.training.run as run_module

    seen: dict = {}
    real_fit = run_module.fit

    def recording_fit(module, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in module["model"].state_dict().items()})
        return real_fit(module, *args, **kwargs)

    monkeypatch.setattr(run_module, "fit", recording_fit)
    return seen


def test_pretrained_encoder_loads_into_train_run(pretrained, tmp_path, monkeypatch):
    from hcld_lib.training.run import train_run

    config, _, result = pretrained
    run = config.replace(out_dir=str(tmp_path), init_emotion_encoder=str(result["path"]),
                         max_epochs=1)
    start = _starting_state(monkeypatch)
    train_run(run)
    pre = torch.load(result["path"], weights_only=True)["emotion_path"]
    assert pre and all(name.startswith("emotion_encoder.") for name in pre)
    for name, value in pre.items():  # fine-tuning starts from exactly the pretrained encoder
        assert torch.equal(start[name], value), name


def test_shape_mismatch_is_a_clear_error(pretrained, tmp_path):
    from hcld_lib.training.run import train_run

    config, _, result = pretrained
    run = config.replace(out_dir=str(tmp_path), init_emotion_encoder=str(result["path"]),
                         hidden_dim=24, max_epochs=1)
    with pytest.raises(HcldError, match="does not fit"):
        train_run(run)


@pytest.mark.parametrize("branches", ["separate", "shared"])
def test_the_pretrained_layer_mix_is_saved_and_reloaded(tmp_path, branches, monkeypatch):
    """On an all-layer cache the emotion path starts with a learnable layer sum: pretraining
    trains it, saves it with the encoder, and fine-tuning starts from it (lr = 0: unchanged)."""
    from hcld_lib.training.run import load_model, train_run

    cache = all_layer_cache(tmp_path)
    config = _config(str(cache.path), tmp_path / "runs", n_folds=2, branches=branches)
    emb, ids = _stand_in_embeddings(str(cache.path))
    emb = emb.reshape(len(emb), -1)
    pseudo = fold_pseudo_labels(config, emb, ids, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pretrain_emotion_encoder(config, pseudo, tmp_path / "enc.pt", epochs=3)
    state = torch.load(result["path"], weights_only=True)["emotion_path"]
    mix = "emotion_layers.weights" if branches == "separate" else "layers.weights"
    assert mix in state and state[mix].abs().max() > 0  # trained away from the uniform start
    run = config.replace(init_emotion_encoder=str(result["path"]), max_epochs=1)
    start = _starting_state(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_run(run)
    model, _ = load_model(tmp_path / "runs" / run.resolved_run_name)
    assert set(state) == set(model.emotion_path().state_dict())
    for name, value in state.items():  # fine-tuning starts from the pretrained path
        assert torch.equal(start[name], value), name
