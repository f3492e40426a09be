"""Training runs end to end on a tiny synthetic corpus: learning, variants, resumption, outputs."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import all_layer_cache

from hcld_lib.io import HcldError
from hcld_lib.method.terms import TERMS
from hcld_lib.method.variants import VARIANTS
from hcld_lib.training.config import RunConfig
from hcld_lib.training.fold import label_budget_subset
from hcld_lib.training.run import embed, train_run

TINY = dict(
    embed_dim=16,
    hidden_dim=16,
    n_layers=1,
    frame_stride=4,
    batch_size=16,
    lr=3e-3,
    warmup_epochs=1,
    lcl_text_encoder="learned",  # the MiniLM path is tested in test_label_embeddings
    val_fraction=0.2,
    device="cpu",
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; one thread avoids oversubscription when
    other processes share the two cores. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.extract import extract_features

    root = tmp_path_factory.mktemp("corpus")
    table = synthesize_corpus(root / "corpus", n_utterances=120, seed=0, emotion_strength=1.0)
    cache = extract_features(table, "fbank", root / "cache", max_seconds=3.0, progress=False)
    return str(cache.path)


def _config(cache_path, out_dir, variant="hcld", **kw):
    return RunConfig(variant=variant, features=cache_path, out_dir=str(out_dir),
                     **{**TINY, **kw})


def _result(metrics):
    """The parts of metrics.json that must repeat exactly (not the timing)."""
    keep = ("selected_epoch", "val", "test", "speaker_test", "best_on_test", "n_train")
    return {k: metrics[k] for k in keep}


@pytest.fixture(scope="module")
def emo_only_run(cache_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = _config(cache_path, out, "emo_only", max_epochs=6)
    return config, train_run(config)


# --- pure helpers -----------------------------------------------------------------------------


def test_label_budget_subset_is_stratified_seeded_and_keeps_classes():
    rows = np.arange(100)
    emotion = np.array([0] * 60 + [1] * 30 + [2] * 10)
    sub = label_budget_subset(rows, emotion, 0.1, seed=0)
    assert np.bincount(emotion[sub]).tolist() == [6, 3, 1]
    assert np.array_equal(sub, label_budget_subset(rows, emotion, 0.1, seed=0))
    assert not np.array_equal(sub, label_budget_subset(rows, emotion, 0.1, seed=1))
    assert np.bincount(emotion[label_budget_subset(rows, emotion, 0.01, 0)]).tolist() == [1, 1, 1]
    assert np.array_equal(label_budget_subset(rows, emotion, 1.0, 0), rows)


# --- training ---------------------------------------------------------------------------------


def test_short_training_learns_and_writes_its_files(emo_only_run):
    config, metrics = emo_only_run
    run_dir = config.out_dir + "/" + config.resolved_run_name
    history = pd.read_csv(f"{run_dir}/history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    # 4 classes: chance UA = 0.25
    assert metrics["test"]["emotion"]["ua"] > 0.4
    assert metrics["val"]["emotion"]["ua"] == pytest.approx(history["val_emotion_ua"].max())
    sel = metrics["selected_epoch"]
    first_best = int(history["val_emotion_ua"].to_numpy().argmax()) + 1
    assert sel == first_best  # ties -> earlier epoch
    assert metrics["test"]["emotion"]["ua"] == pytest.approx(
        history.loc[sel - 1, "test_emotion_ua"])
    assert metrics["best_on_test"]["emotion_ua"] == pytest.approx(history["test_emotion_ua"].max())
    assert "optimistic" in metrics["best_on_test"]["note"]
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 120
    assert json.loads(open(f"{run_dir}/metrics.json").read())["selected_epoch"] == sel
    assert not Path(run_dir, "checkpoint.pt").exists()


def test_emo_only_saves_no_speaker_embeddings_and_embed_reproduces_them(emo_only_run,
                                                                        cache_path):
    from hcld_lib.features.cache import open_cache

    config, metrics = emo_only_run
    run_dir = f"{config.out_dir}/{config.resolved_run_name}"
    with np.load(f"{run_dir}/embeddings.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert "x_s" not in arrays
    assert arrays["x_e"].shape == (metrics["n_test"], 16)
    assert arrays["x_e"].dtype == np.float32
    assert set(arrays["split"]) == {"test"}
    assert metrics["test"]["speaker"] is None
    cache = open_cache(cache_path)
    again = embed(run_dir, cache, list(arrays["utterance_id"]))
    assert again["x_s"] is None
    np.testing.assert_allclose(again["x_e"], arrays["x_e"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_runs_one_epoch_with_finite_losses(variant, cache_path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sampler may warn about speakers with one emotion
        metrics = train_run(_config(cache_path, tmp_path, variant, max_epochs=1))
    history = pd.read_csv(tmp_path / metrics["run_name"] / "history.csv")
    config = RunConfig(variant=variant)
    for term in TERMS:
        weight = getattr(config, term.weight)
        for column in term.logged:
            value = history.loc[0, f"loss_{column}"]
            assert math.isfinite(value) if weight > 0 else math.isnan(value), column
    assert math.isfinite(history.loc[0, "loss"])
    with np.load(tmp_path / metrics["run_name"] / "embeddings.npz") as z:
        assert ("x_s" in z.files) == config.speaker_branch


def test_loso_reports_speakers_on_speaker_test(cache_path, tmp_path):
    metrics = train_run(_config(cache_path, tmp_path, "hcld", max_epochs=1, protocol="loso",
                                n_folds=5, fold=1))
    assert metrics["test"]["speaker"] is None  # test speakers are unseen in training
    assert metrics["speaker_test"]["speaker"]["n"] == metrics["n_speaker_test"] > 0
    with np.load(tmp_path / metrics["run_name"] / "embeddings.npz") as z:
        assert {"spk_x_e", "spk_x_s", "spk_speaker", "spk_utterance_id"} <= set(z.files)
        assert set(z["spk_split"]) == {"speaker_test"}
        test_speakers, train_speakers = set(z["speaker"]), set(z["spk_speaker"])
    assert not test_speakers & train_speakers


def test_killed_run_resumes_to_exactly_the_same_metrics(cache_path, tmp_path):
    whole = train_run(_config(cache_path, tmp_path / "a", max_epochs=3))
    again = train_run(_config(cache_path, tmp_path / "b", max_epochs=3))
    assert _result(again) == _result(whole)  # seeded: the same run twice

    def kill_after_one(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    config = _config(cache_path, tmp_path / "c", max_epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, on_epoch_end=kill_after_one)
    run_dir = tmp_path / "c" / config.resolved_run_name
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "metrics.json").exists()
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    seen = []
    resumed = train_run(config, on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [2, 3]
    assert _result(resumed) == _result(whole)
    assert not (run_dir / "checkpoint.pt").exists()
    h_whole = pd.read_csv(tmp_path / "a" / config.resolved_run_name / "history.csv")
    h_resumed = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(h_whole.drop(columns="seconds"),
                                  h_resumed.drop(columns="seconds"))


def test_finished_run_is_skipped(emo_only_run, monkeypatch):
    import hcld_lib.training.fold as fold
    import hcld_lib.training.run as run

    config, metrics = emo_only_run

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not open the cache or train again")

    monkeypatch.setattr(fold, "open_cache", no_training)
    monkeypatch.setattr(run, "_train", no_training)
    assert train_run(config) == metrics
    # the same folder asked for with other settings is refused, not silently reused
    other = config.replace(max_epochs=config.max_epochs + 1)
    with pytest.raises(HcldError, match="holds a finished run with other settings"):
        train_run(other)


def test_bad_init_emotion_encoder_names_the_file(cache_path, tmp_path):
    garbage = tmp_path / "encoder.pt"
    garbage.write_bytes(b"not a state dict")
    with pytest.raises(HcldError, match="encoder.pt"):
        train_run(_config(cache_path, tmp_path / "r1", max_epochs=1,
                          init_emotion_encoder=str(garbage)))
    wrong = tmp_path / "wrong_shape.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(HcldError, match="wrong_shape.pt"):
        train_run(_config(cache_path, tmp_path / "r2", max_epochs=1,
                          init_emotion_encoder=str(wrong)))
    with pytest.raises(HcldError, match="missing.pt"):
        train_run(_config(cache_path, tmp_path / "r3", max_epochs=1,
                          init_emotion_encoder=str(tmp_path / "missing.pt")))


def test_init_emotion_encoder_loads_the_weights(emo_only_run, cache_path, tmp_path):
    from hcld_lib.training.run import load_model

    config, _ = emo_only_run
    model, _ = load_model(f"{config.out_dir}/{config.resolved_run_name}")
    path = tmp_path / "pretrained.pt"
    torch.save({"emotion_path": model.emotion_state()}, path)
    metrics = train_run(_config(cache_path, tmp_path, "emo_only", max_epochs=1, lr=1e-12,
                                warmup_epochs=0, dropout=0.0, init_emotion_encoder=str(path)))
    loaded, _ = load_model(tmp_path / metrics["run_name"])
    trained = dict(loaded.emotion_encoder.named_parameters())
    for key, value in model.emotion_encoder.named_parameters():  # (buffers: BatchNorm stats move)
        torch.testing.assert_close(trained[key], value, rtol=1e-6, atol=1e-6)


# --- all-layer SSL caches: the learnable layer sum (SUPERB style) ------------------------------


def test_all_layer_cache_trains_a_learnable_layer_sum(tmp_path, monkeypatch):
    """A ``layer="all"`` cache of a (tiny, random) HF HuBERT trains end to end: the model gets a
    softmax-weighted layer sum per branch, the weights move, and the saved model re-embeds."""
    from hcld_lib.method.models import LayerWeightedSum
    from hcld_lib.training.run import embed, load_model

    cache = all_layer_cache(tmp_path)
    assert cache.n_layers == 3 and cache.array.ndim == 4  # [N, L, T, D]: input + 2 layers

    config = _config(str(cache.path), tmp_path / "runs", "hcld", max_epochs=2, n_folds=2)
    metrics = train_run(config)
    assert math.isfinite(metrics["test"]["emotion"]["ua"])
    model, _ = load_model(Path(config.out_dir) / config.resolved_run_name)
    sums = [m for m in model.modules() if isinstance(m, LayerWeightedSum)]
    assert len(sums) == 2  # one per branch
    weights = torch.cat([p.detach().flatten() for m in sums for p in m.parameters()])
    assert weights.abs().max() > 0  # trained away from the uniform start
    out = embed(Path(config.out_dir) / config.resolved_run_name, cache, [0, 1, 2])
    assert out["x_e"].shape == (3, TINY["embed_dim"])


def test_tensorboard_curves_hold_each_epoch_once_after_a_resume(cache_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _config(cache_path, tmp_path, "hcld", max_epochs=3)

    def kill_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(config.replace(checkpoint_every=1), on_epoch_end=kill_after_two)
    metrics = train_run(config)
    events = EventAccumulator(str(tmp_path / config.resolved_run_name / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/total", "loss/icld_pos", "loss/supcon", "val/emotion_ua", "test/emotion_wa",
            "train/lr", "train/selected_epoch"} <= set(tags)
    # each epoch once: the second epoch was logged before the kill and again after the resume
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3]
    assert events.Scalars("train/selected_epoch")[-1].value == metrics["selected_epoch"]
    history = pd.read_csv(tmp_path / config.resolved_run_name / "history.csv")
    assert [e.value for e in events.Scalars("val/emotion_ua")] == pytest.approx(
        history["val_emotion_ua"].tolist())


def test_a_resumed_log_discards_the_epochs_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hcld_lib.training.log import RunLog

    rows = [{"epoch": e, "loss": 1.0 / e, "val_emotion_ua": 0.5} for e in (1, 2, 3)]
    first = RunLog(tmp_path, [], every=1)
    for row in rows:
        first.epoch(row)
    first.writer.close()  # killed after epoch 3; its checkpoint was at epoch 2
    again = RunLog(tmp_path, rows[:2], every=1)
    again.epoch({"epoch": 3, "loss": 0.25, "val_emotion_ua": 0.6})
    again.close(selected_epoch=3)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [
        (1, 1.0), (2, 0.5), (3, 0.25)]
    assert len(pd.read_csv(tmp_path / "history.csv")) == 3


# --- how long a run trains: the plateau rule, budgets ------------------------------------------

PLATEAU = dict(stop_at_plateau=True, patience=2, plateau_window=1, min_epochs=3, max_epochs=40)


def test_a_run_stops_at_its_plateau_and_says_so(cache_path, tmp_path):
    from hcld_lib.training.stopping import plateau_epoch, selected_epoch

    metrics = train_run(_config(cache_path, tmp_path, "emo_only", **PLATEAU))
    history = pd.read_csv(tmp_path / metrics["run_name"] / "history.csv")
    curve = history["val_emotion_ua"].tolist()
    first = plateau_epoch(curve, patience=2, window=1)
    assert first is not None
    assert metrics["stop_reason"] == "plateau" and metrics["converged"]
    assert metrics["epochs_trained"] == len(history) == max(first, 3) < 40
    assert metrics["plateau_epoch"] == first
    assert metrics["selected_epoch"] == selected_epoch(curve)


def test_a_run_that_ends_while_still_improving_is_not_converged(cache_path, tmp_path):
    metrics = train_run(_config(cache_path, tmp_path, "emo_only", max_epochs=3,
                                stop_at_plateau=True, patience=10, min_epochs=1))
    assert metrics["epochs_trained"] == 3 and metrics["stop_reason"] == "max_epochs"
    assert metrics["converged"] is False and metrics["plateau_epoch"] is None


def test_a_killed_run_with_patience_resumes_to_the_same_stop(cache_path, tmp_path):
    whole = train_run(_config(cache_path, tmp_path / "a", **PLATEAU))
    config = _config(cache_path, tmp_path / "b", **PLATEAU, checkpoint_every=2)

    def kill_at(epoch_to_kill):
        def kill(epoch, row):
            if epoch == epoch_to_kill:
                raise KeyboardInterrupt
        return kill

    with pytest.raises(KeyboardInterrupt):  # between two checkpoints
        train_run(config, on_epoch_end=kill_at(3))
    resumed = train_run(config)
    assert _result(resumed) == _result(whole)
    assert resumed["epochs_trained"] == whole["epochs_trained"]
    assert resumed["plateau_epoch"] == whole["plateau_epoch"]
    history = lambda root: pd.read_csv(root / whole["run_name"] / "history.csv")  # noqa: E731
    pd.testing.assert_frame_equal(history(tmp_path / "a").drop(columns="seconds"),
                                  history(tmp_path / "b").drop(columns="seconds"))

    # killed after its last epoch, before metrics.json: it resumes without training further
    again = _config(cache_path, tmp_path / "c", **PLATEAU)
    with pytest.raises(KeyboardInterrupt):
        train_run(again, on_epoch_end=kill_at(whole["epochs_trained"]))
    seen = []
    finished = train_run(again, on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [] and _result(finished) == _result(whole)


def test_a_shorter_budget_is_exactly_the_first_epochs_of_a_longer_run(cache_path, tmp_path):
    from hcld_lib.training.stopping import at_budget

    long = train_run(_config(cache_path, tmp_path / "long", "hcld", max_epochs=5))
    short = train_run(_config(cache_path, tmp_path / "short", "hcld", max_epochs=3))
    h_long = pd.read_csv(tmp_path / "long" / long["run_name"] / "history.csv")
    h_short = pd.read_csv(tmp_path / "short" / short["run_name"] / "history.csv")
    pd.testing.assert_frame_equal(h_long.head(3).drop(columns="seconds"),
                                  h_short.drop(columns="seconds"))
    row = at_budget(h_long.to_dict("records"), 3)
    assert row["epoch"] == short["selected_epoch"]
    assert row["test_emotion_ua"] == pytest.approx(short["test"]["emotion"]["ua"], abs=0)
    assert row["speaker_test_speaker_ua"] == pytest.approx(
        short["speaker_test"]["speaker"]["ua"], abs=0)


# --- nothing runs that should not, nothing wrong passes silently ------------------------------


class _Planted:
    """A pickle that runs a shell command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_code_running_checkpoint_or_model_is_refused_by_name(cache_path, tmp_path):
    from hcld_lib.training.run import load_model

    config = _config(cache_path, tmp_path, "emo_only", max_epochs=1)
    marker = tmp_path / "pwned"
    config.run_dir.mkdir(parents=True)
    torch.save({"identity": _Planted(marker)}, config.run_dir / "checkpoint.pt")
    with pytest.raises(HcldError, match="checkpoint.pt"):
        train_run(config)
    planted_model = tmp_path / "other" / "model.pt"
    planted_model.parent.mkdir()
    torch.save({"model": _Planted(marker)}, planted_model)
    with pytest.raises(HcldError, match="model.pt"):
        load_model(planted_model)
    assert not marker.exists()  # nothing of either pickle ran


@pytest.mark.parametrize("content, words", [
    (b"PK\x03\x04 truncated", "checkpoint.pt"),
    (b"\x80\x04random bytes", "checkpoint.pt"),
    (None, "lacks"),
])
def test_a_damaged_checkpoint_is_refused_by_name(cache_path, tmp_path, content, words):
    config = _config(cache_path, tmp_path, "emo_only", max_epochs=1)
    config.run_dir.mkdir(parents=True)
    if content is None:
        torch.save({"identity": config.result_key(), "epoch": 1}, config.run_dir / "checkpoint.pt")
    else:
        (config.run_dir / "checkpoint.pt").write_bytes(content)
    with pytest.raises(HcldError, match=words) as err:
        train_run(config)
    assert "delete" in str(err.value)


def test_a_truncated_metrics_file_is_refused_by_name(emo_only_run):
    config, _ = emo_only_run
    path = config.run_dir / "metrics.json"
    text = path.read_text()
    try:
        path.write_text(text[: len(text) // 2])
        with pytest.raises(HcldError, match="metrics.json"):
            train_run(config)
    finally:
        path.write_text(text)


def test_an_unwritable_runs_folder_and_a_missing_cache_are_said_before_any_work(cache_path,
                                                                                tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(HcldError, match="a-file is a file, not a folder"):
        train_run(_config(cache_path, blocker, "emo_only", max_epochs=1))
    with pytest.raises(HcldError, match="RunConfig.features is empty"):
        train_run(RunConfig(variant="emo_only", out_dir=str(tmp_path / "runs"), max_epochs=1))


def test_one_run_folder_is_trained_by_one_process_at_a_time(cache_path, tmp_path):
    import fcntl
    import threading
    import time

    from hcld_lib.io import short_hash

    config = _config(cache_path, tmp_path, "emo_only", max_epochs=1)
    config.run_dir.mkdir(parents=True)
    # another process trains other settings in the folder: refused
    with open(config.run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242 0123456789abcdef")
        held.flush()
        with pytest.raises(HcldError, match=r"another process now \(pid 4242\) with other"):
            train_run(config)
    # another process trains this very run: waited for, then its result is read, not retrained
    done = {}
    with open(config.run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0)
        held.truncate()
        held.write(f"4242 {short_hash(config.result_key(), 16)}")
        held.flush()
        waiter = threading.Thread(target=lambda: done.update(m=train_run(config)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and not done  # it waits on the lock
        twin = _config(cache_path, tmp_path / "twin", "emo_only", max_epochs=1)
        result = train_run(twin)  # "the other process" trains the same settings elsewhere
        (config.run_dir / "metrics.json").write_text(
            (twin.run_dir / "metrics.json").read_text())
    waiter.join(timeout=60)
    assert done["m"]["result_key"] == result["result_key"]
    assert not (config.run_dir / "history.csv").exists()  # the waiter trained nothing


def test_a_non_finite_loss_says_whether_the_data_or_the_training_is_at_fault():
    from torch import nn

    from hcld_lib.training.fit import Batches, fit

    def run(x: torch.Tensor, lr: float) -> None:
        layer = nn.Linear(2, 1)
        batches = lambda epoch: Batches([0], lambda i: {"x": x})  # noqa: E731
        fit(layer, batches, lambda b: {"y": layer(b["x"])},
            lambda out, b: (out["y"].sum() * 1e30 ** 2, {}), epochs=1, lr=lr)

    with pytest.raises(HcldError, match=r"\['x'\] hold NaN or infinite values.*data"):
        run(torch.tensor([[float("nan"), 1.0]]), lr=1e-3)
    with pytest.raises(HcldError, match="training diverged: lower lr"):
        run(torch.tensor([[1e10, 1.0]]), lr=1e-3)


def test_a_setting_only_the_speaker_branch_reads_leaves_the_emotion_branch_bit_for_bit(
        cache_path, tmp_path):
    base = _config(cache_path, tmp_path, "hcld", max_epochs=3, dropout=0.0)
    other = base.replace(icld_hinge="above", icld_margin=0.3)
    assert other.emotion_key() == base.emotion_key()
    assert other.resolved_run_name != base.resolved_run_name
    a, b = train_run(base), train_run(other)
    h_a = pd.read_csv(base.run_dir / "history.csv")
    h_b = pd.read_csv(other.run_dir / "history.csv")
    emotion = [c for c in h_a.columns if "emotion" in c or c.startswith(("loss_ce_emotion",
                                                                         "loss_supcon",
                                                                         "loss_lcl",
                                                                         "loss_icld_pos"))]
    pd.testing.assert_frame_equal(h_a[emotion], h_b[emotion])
    assert a["test"]["emotion"] == b["test"]["emotion"]
    assert not h_a["loss_icld_neg"].equals(h_b["loss_icld_neg"])  # the speaker side did change
