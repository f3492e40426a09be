"""Training speed: what a run costs beyond the model, the grid on Ray, and the paper's size.

Prints, in one run (nothing is asserted; ``make bench``):

1. ``train_run`` against a bare PyTorch loop doing the same work: the same model, losses, batches
   (the same sampler's), steps and evaluation passes, on tensors already in memory; the quick
   profile on the embedded corpus, one HCLD run per architecture, steady state (a warm-up run
   first), 5 epochs. Goal: train_run <= 1.3 x the bare loop.
2. A run's fixed cost: ``train_run`` of one CNN HCLD run at 1, 4 and 10 epochs (fixed budgets,
   in this warm process, best of two each), fitted by least squares as ``seconds = fixed +
   per_epoch x epochs``; the fixed cost is the intercept. Then the same 12 runs (3 variants x 4
   folds, 10 epochs) through the grid on a local Ray with 2 workers (cold workers: each imports
   the package and prepares its folds) against the sum of their ``train_run`` times alone: the
   grid's wall time x 2 workers / runs against train_run alone per run.
3. The quick grid (the default variants x 3 architectures x 2 folds, 5 epochs) on the serial
   engine (in this warm process) against Ray with 2 workers, and apart, the seconds the local Ray
   takes to start.
4. Training steps per second per architecture at the paper's size (batch 32, 374 frames,
   768-d features, 256-d encoders, both branches, the full HCLD loss) on the device present.
5. The BiLSTM encoder against a bare ``nn.LSTM`` of the same size on the same input, packing
   included, forward + backward.

The corpus and its cache are made once under ``runs/bench/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from hcld_lib.experiments.engine import ray_session  # noqa: E402
from hcld_lib.experiments.grid import grid_configs, run_configs  # noqa: E402
from hcld_lib.experiments.params import setup  # noqa: E402
from hcld_lib.method.models import BLSTMEncoder, DualBranchModel  # noqa: E402
from hcld_lib.method.sampler import ContrastiveBatchSampler  # noqa: E402
from hcld_lib.method.terms import objective  # noqa: E402
from hcld_lib.runtime import resolve_device, set_seed  # noqa: E402
from hcld_lib.training.config import RunConfig  # noqa: E402
from hcld_lib.training.evaluate import predict  # noqa: E402
from hcld_lib.training.fold import prepare_fold  # noqa: E402
from hcld_lib.training.run import build_model, train_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "runs" / "bench"


def bare_loop(config) -> float:
    """The same work as ``train_run(config)`` with nothing around it; returns seconds."""
    start = time.perf_counter()
    set_seed(config.seed)
    device = resolve_device(config.device)
    data = prepare_fold(config)
    model, modules = build_model(config, data)
    params = list(model.parameters()) + list(modules.parameters())
    opt = torch.optim.Adam(params, lr=config.lr, fused=True)
    features = data.features(device)
    emotion, speaker = torch.tensor(data.emotion), torch.tensor(data.speaker)
    sampler = ContrastiveBatchSampler(data.emotion[data.train], data.speaker[data.train],
                                      config.batch_size, seed=config.seed,
                                      need=config.sampler_needs)
    settings = config.settings()
    for epoch in range(config.max_epochs):
        model.train()
        for idx in sampler.batches(epoch):
            rows = torch.as_tensor(data.train[idx])
            x, lengths = features.gather(rows)
            out = model(x, lengths)
            total, _ = objective(out, emotion[rows], speaker[rows], settings, modules)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
        with torch.no_grad():
            for part in (data.fold.val, data.fold.test):
                predict(model, features, part, 256)
    return time.perf_counter() - start


def _timed_run(config, out: Path) -> float:
    shutil.rmtree(out / config.resolved_run_name)
    t0 = time.perf_counter()
    train_run(config)
    return time.perf_counter() - t0


def overhead(exp) -> None:
    print("1. train_run against a bare loop on the same work (quick profile, HCLD, fold 0)")
    print(f"   {'arch':<12s} {'train_run s':>11s} {'bare s':>8s} {'ratio':>6s}")
    out = WORK / "overhead"
    for arch in ("cnn", "lstm", "transformer"):
        config = exp.config("hcld", arch, 0, 0, out_dir=str(out), max_epochs=5,
                            stop_at_plateau=False)
        shutil.rmtree(out, ignore_errors=True)
        train_run(config)  # warm-up: imports, label-word embeddings, first kernels
        ours = min(_timed_run(config, out) for _ in range(2))
        bare = min(bare_loop(config) for _ in range(2))
        print(f"   {arch:<12s} {ours:11.2f} {bare:8.2f} {ours / bare:5.2f}x")


def fixed_cost(exp) -> None:
    print("2. a run's fixed cost: train_run against epochs (CNN HCLD, warm process), and the grid "
          "per run against train_run alone")
    out = WORK / "fixed"
    epochs = (1, 4, 10)
    seconds = []
    for n in epochs:
        config = exp.config("hcld", "cnn", 0, 0, out_dir=str(out), max_epochs=n,
                            stop_at_plateau=False)
        shutil.rmtree(out, ignore_errors=True)
        train_run(config)  # warm-up (imports, the fold's features, label embeddings)
        seconds.append(min(_timed_run(config, out) for _ in range(2)))
    slope, intercept = np.polyfit(epochs, seconds, 1)
    print("   " + ", ".join(f"{n} epochs {s:.2f} s" for n, s in zip(epochs, seconds)))
    print(f"   fixed cost per run (intercept) {intercept:.3f} s; per epoch {slope:.3f} s")
    configs = grid_configs(exp.config(max_epochs=10, stop_at_plateau=False),
                           ["emo_only", "orth", "hcld"], ["cnn"], [0, 1, 2, 3], [0], out)
    shutil.rmtree(out, ignore_errors=True)
    alone = 0.0
    for config in configs:
        t0 = time.perf_counter()
        train_run(config)
        alone += time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    with ray_session(num_cpus=2):
        t0 = time.perf_counter()
        run_configs(configs, progress=False, engine="ray")
        wall = time.perf_counter() - t0
    n = len(configs)
    print(f"   {n} runs of 10 epochs: train_run alone {alone / n:.2f} s a run; the grid on Ray "
          f"(2 cold workers) {2 * wall / n:.2f} worker-s a run ({wall:.1f} s wall): "
          f"{2 * wall / alone:.2f}x")


def grid(exp) -> None:
    print("3. the quick grid (default variants x 3 archs x 2 folds, 5 epochs): serial vs Ray with "
          "2 workers")
    configs = {}
    base = exp.config(max_epochs=5, stop_at_plateau=False)
    for engine in ("serial", "ray"):
        out = WORK / f"grid-{engine}"
        shutil.rmtree(out, ignore_errors=True)
        configs[engine] = grid_configs(base, exp.variants, exp.archs, [0, 1], [0], out)
    t0 = time.perf_counter()
    run_configs(configs["serial"], progress=False, engine="serial")
    took = time.perf_counter() - t0
    n = len(configs["serial"])
    print(f"   serial  {n} runs in {took:6.1f} s ({took / n:.2f} s a run; this process is warm)")
    t0 = time.perf_counter()
    with ray_session(num_cpus=2):
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_configs(configs["ray"], progress=False, engine="ray")
        took = time.perf_counter() - t0
    print(f"   ray     {n} runs in {took:6.1f} s ({took / n:.2f} s a run; two cold workers), "
          f"after {start:.1f} s to start the local Ray")


def paper_size() -> None:
    device = resolve_device("auto")
    print(f"4. training steps at the paper's size on {device}, {torch.get_num_threads()} "
          "thread(s) (batch 32 x 374 frames x 768-d, 256-d encoders, both branches, the HCLD "
          "loss)")
    torch.manual_seed(0)
    x = torch.randn(32, 374, 768, device=device)
    lengths = torch.randint(120, 375, (32,), device=device)
    emotion = torch.arange(32, device=device) % 4
    speaker = torch.arange(32, device=device) // 4 % 8
    for arch in ("cnn", "lstm", "transformer"):
        model = DualBranchModel(768, 4, 8, arch).to(device)
        anchors = torch.nn.ModuleDict({"lcl": torch.nn.Embedding(4, 256)}).to(device)
        opt = torch.optim.Adam([*model.parameters(), *anchors.parameters()], fused=True)
        settings = RunConfig(variant="hcld").settings()

        def step(model=model, opt=opt, anchors=anchors, settings=settings) -> None:
            total, _ = objective(model(x, lengths), emotion, speaker, settings, anchors)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        step()
        n = 2 if device.type == "cpu" and arch == "lstm" else 5
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / n
        print(f"   {arch:<12s} {1 / sec:7.2f} steps/s  ({32 / sec:7.1f} utt/s)")


def lstm() -> None:
    print("5. BiLSTM encoder vs a bare nn.LSTM of the same size (2 layers x 256 per direction, "
          "[32, 374, 768], packing included, fwd + bwd)")
    torch.manual_seed(0)
    x = torch.randn(32, 374, 768)
    lengths = torch.randint(120, 375, (32,))
    enc = BLSTMEncoder(768, 256, 256, 2, dropout=0.1)
    bare = torch.nn.LSTM(768, 256, num_layers=2, batch_first=True, bidirectional=True,
                         dropout=0.1)

    def ours() -> None:
        enc(x, lengths).sum().backward()

    def plain() -> None:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = bare(packed)
        pad_packed_sequence(out, batch_first=True)[0].sum().backward()

    times = {}
    for name, fn in (("encoder", ours), ("nn.LSTM", plain)):
        fn()
        t0 = time.perf_counter()
        for _ in range(2):
            fn()
        times[name] = (time.perf_counter() - t0) / 2
    print(f"   encoder {32 / times['encoder']:5.2f} utt/s, bare {32 / times['nn.LSTM']:5.2f} "
          f"utt/s: {times['encoder'] / times['nn.LSTM']:.2f}x")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    exp = setup(work_dir=str(WORK / "work"), results_dir=str(WORK / "results"),
                archs=["cnn", "lstm", "transformer"])
    exp.features(progress=False)
    parts = sys.argv[1:] or ["overhead", "fixed", "grid", "paper", "lstm"]
    if "overhead" in parts:
        overhead(exp)
    if "fixed" in parts:
        fixed_cost(exp)
    if "grid" in parts:
        grid(exp)
    if "paper" in parts:
        paper_size()
    if "lstm" in parts:
        lstm()


if __name__ == "__main__":
    main()
