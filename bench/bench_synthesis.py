"""Synthesis speed of the embedded corpus: seconds of audio generated per second on one core.

Goal: at least 100x real time. Run: ``python bench/bench_synthesis.py [n_utterances]``.
Prints the rate for rendering alone and for the whole ``synthesize_corpus`` (WAV encoding and
atomic, fsynced writes included), by CPU time of this process (the one-core figure; it does not
suffer when other jobs share the machine) and by wall-clock time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from hcld_lib.data.render import render_utterance
from hcld_lib.data.synthetic import plan_corpus, synthesize_corpus


def _rate(audio_s: float, cpu: float, wall: float) -> str:
    return (f"{audio_s:7.1f} s of audio, {audio_s / cpu:6.1f} x real time (CPU), "
            f"{audio_s / wall:6.1f} x (wall)")


def main(n_utterances: int = 200) -> None:
    """Time rendering and the whole corpus writer for ``n_utterances`` utterances."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    plan = plan_corpus(n_utterances, seed=0)
    audio_s = float(plan["duration"].sum())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, rec in enumerate(plan.to_dict("records")):
        render_utterance(rec, 16000, np.random.default_rng(i))
    print("render only      :", _rate(audio_s, time.process_time() - cpu0,
                                      time.perf_counter() - wall0))

    with tempfile.TemporaryDirectory() as tmp:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        table = synthesize_corpus(Path(tmp) / "corpus", n_utterances=n_utterances, seed=0)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print("synthesize_corpus:", _rate(float(table["duration"].sum()), cpu, wall))


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
