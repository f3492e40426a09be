"""Throughput of the encoders and the cost of the full HCLD loss against a CNN training step.

Run: ``.venv/bin/python bench/bench_losses.py [--steps 3] [--quick]``

1. Training throughput (forward + backward, utterances/s) of each encoder on ``[374 x 768]``
   inputs (7.5 s of HuBERT-base frames) at batch 32, default sizes (256-d, 2 layers).
2. The full HCLD loss (ICLD + SupCon + label-anchored + task, forward + backward, on given
   ``[B, 256]`` embeddings) against the forward + backward of a CNN-branch step at batch sizes
   32 ... 1024. The loss does not depend on the number of frames; the CNN step does, so large
   batches use fewer frames where stated in the printout (the goal is a loss under 10 % of the
   step at batch 32, the paper's batch size).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
import torch.nn.functional as F

from hcld_lib.data.labels import EMOTIONS
from hcld_lib.method.anchors import LabelAnchors
from hcld_lib.method.models import ENCODER_ARCHS, DualBranchModel, build_encoder
from hcld_lib.method.terms import objective
from hcld_lib.training.config import RunConfig

FRAMES, FEATURES, EMBED, N_SPEAKERS = 374, 768, 256, 10
HCLD = RunConfig(variant="hcld").settings()


def timed(fn, steps: int, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` in seconds over ``steps`` runs after ``warmup`` runs.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def batch(b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, FEATURES, generator=g)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    lengths[0] = t
    emotion = torch.randint(0, len(EMOTIONS), (b,), generator=g)
    speaker = torch.randint(0, N_SPEAKERS, (b,), generator=g)
    return x, lengths, emotion, speaker


def encoder_throughput(steps: int) -> None:
    print(f"1. encoder training throughput, input [32 x {FRAMES} x {FEATURES}], 256-d, 2 layers")
    x, lengths, _, _ = batch(32, FRAMES)
    for arch in ENCODER_ARCHS:
        torch.manual_seed(0)
        enc = build_encoder(arch, FEATURES).train()

        def step(enc=enc) -> None:
            enc.zero_grad(set_to_none=True)
            enc(x, lengths).pow(2).mean().backward()

        sec = timed(step, steps)
        print(f"   {arch:<12s} {32 / sec:8.1f} utt/s   ({sec * 1000:7.1f} ms / batch of 32)")


def hcld_loss_step(x_e, x_s, emotion, speaker, anchors, heads) -> None:
    """Forward + backward of L = L_task + L_CLD + L_SCL + L_Label on given embeddings."""
    out = {"x_e": x_e, "x_s": x_s, "emotion_logits": heads[0](x_e),
           "speaker_logits": heads[1](x_s)}
    total, _ = objective(out, emotion, speaker, HCLD, torch.nn.ModuleDict({"lcl": anchors}))
    total.backward()


def hcld_loss_cost(batch_sizes: list[int], steps: int, frame_budget: int) -> None:
    print("2. full HCLD loss (ICLD + SupCon + label-anchored + task; fwd+bwd) vs a CNN step")
    print("   CNN step = fwd+bwd of one CNN branch (768 -> 256, 2 layers) + its head")
    print("   (the HCLD step runs two branches, so the real share is about half of loss/step)")
    print("   CNN@374 = CNN ms scaled linearly to 374 frames where T was cut")
    print(
        f"   {'batch':>6s} {'frames':>6s} {'loss ms':>9s} {'CNN ms':>9s} {'loss/step':>9s} "
        f"{'CNN@374 ms':>11s} {'loss/step@374':>13s}"
    )
    torch.manual_seed(0)
    anchors = LabelAnchors(list(EMOTIONS), EMBED, text_encoder="learned")
    heads = (torch.nn.Linear(EMBED, len(EMOTIONS)), torch.nn.Linear(EMBED, N_SPEAKERS))
    for b in batch_sizes:
        # the CNN step's cost grows with B x T: keep B x T within the budget for large batches
        t = min(FRAMES, max(16, frame_budget // b))
        x, lengths, emotion, speaker = batch(b, t)
        g = torch.Generator().manual_seed(1)
        x_e = torch.randn(b, EMBED, generator=g).requires_grad_(True)
        x_s = torch.randn(b, EMBED, generator=g).requires_grad_(True)

        model = DualBranchModel(FEATURES, len(EMOTIONS), N_SPEAKERS, "cnn", speaker_branch=False)

        def cnn_step(model=model, x=x, lengths=lengths, emotion=emotion) -> None:
            model.zero_grad(set_to_none=True)
            out = model(x, lengths)
            F.cross_entropy(out["emotion_logits"], emotion).backward()

        loss_sec = timed(partial(hcld_loss_step, x_e, x_s, emotion, speaker, anchors, heads), 5)
        cnn_sec = timed(cnn_step, steps)
        full = cnn_sec * FRAMES / t
        note = "" if t == FRAMES else f"  T cut to {t} frames (time/memory)"
        print(
            f"   {b:>6d} {t:>6d} {loss_sec * 1000:9.2f} {cnn_sec * 1000:9.1f} "
            f"{100 * loss_sec / cnn_sec:8.2f}% {full * 1000:11.1f} {100 * loss_sec / full:12.2f}%"
            f"{note}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--quick", action="store_true", help="batch sizes 32 and 64 only")
    parser.add_argument(
        "--frame-budget", type=int, default=128 * FRAMES,
        help="max B x T for the CNN step (larger batches use fewer frames)",
    )
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at start (times are the best of {args.steps} steps)"
    )
    encoder_throughput(args.steps)
    sizes = [32, 64] if args.quick else [32, 64, 128, 256, 512, 1024]
    hcld_loss_cost(sizes, args.steps, args.frame_budget)


if __name__ == "__main__":
    main()
