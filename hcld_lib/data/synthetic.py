"""The embedded default corpus: synthetic emotional speech from a source-filter voice.

No download, deterministic from a seed, IEMOCAP-shaped: ten speakers in five "sessions" (one F
and one M each), four emotions, utterances of 1.5-4 s at 16 kHz. Each utterance's factors come
from :mod:`hcld_lib.data.voice` (the speaker's voice and the emotion's prosody), its sound from
:mod:`hcld_lib.data.render` (text and source-filter rendering); :func:`plan_corpus` shares the
emotions out over the speakers.

:func:`synthesize_corpus` writes ``wav/<utterance_id>.wav``, ``manifest.csv`` (read by
:func:`hcld_lib.data.manifest.load_manifest`), ``factors.csv`` (every generating factor of every
utterance) and, last, ``corpus.json`` (the parameters; its presence marks a complete corpus).
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.data.labels import EMOTIONS
from hcld_lib.data.manifest import load_manifest
from hcld_lib.data.render import random_text, render_utterance, wav_bytes
from hcld_lib.data.voice import make_speakers, seeded_rng, utterance_factors
from hcld_lib.io import (
    HcldError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from hcld_lib.runtime import progress as progress_bar

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would produce different audio."""


def plan_corpus(
    n_utterances: int = 1000,
    seed: int = 0,
    emotion_strength: float = 0.6,
    confounding: float = 0.3,
    n_sessions: int = 5,
    min_seconds: float = 1.5,
    max_seconds: float = 4.0,
) -> pd.DataFrame:
    """The generating factors of every utterance of a corpus, without rendering audio.

    Emotions per speaker: the speaker's emotion distribution is
    ``(1 - confounding) * uniform + confounding * Dirichlet(0.7, ..., 0.7)`` and the speaker's
    utterances are shared out by it (largest remainders, then shuffled), so ``confounding=0``
    spreads emotions evenly over speakers and ``confounding=1`` skews each speaker strongly.

    Returns one row per utterance (sorted by ``utterance_id``) with the columns of
    ``factors.csv``.
    """
    _check_params(n_utterances, emotion_strength, confounding, n_sessions, min_seconds,
                  max_seconds, 16000)
    voices = make_speakers(n_sessions, seed)
    n_spk = len(voices)
    alloc_rng = seeded_rng(seed, 2)
    n_emo = len(EMOTIONS)
    rows = []
    for si, voice in enumerate(voices):
        n_s = n_utterances // n_spk + (1 if si < n_utterances % n_spk else 0)
        skew = alloc_rng.dirichlet(np.full(n_emo, 0.7))
        p = (1.0 - confounding) * np.full(n_emo, 1.0 / n_emo) + confounding * skew
        counts = np.floor(p * n_s).astype(int)
        rest = n_s - counts.sum()
        # Largest remainders; ties broken by a seeded order so no emotion is always favoured.
        order = np.lexsort((alloc_rng.random(n_emo), -(p * n_s - counts)))
        counts[order[:rest]] += 1
        emotions = np.repeat(np.array(EMOTIONS), counts)
        alloc_rng.shuffle(emotions)
        for j, emotion in enumerate(emotions.tolist()):
            rng = seeded_rng(seed, 3, si, j)
            f = utterance_factors(voice, emotion, emotion_strength, rng)
            duration = float(rng.uniform(min_seconds, max_seconds))
            lead = float(rng.uniform(0.05, 0.15))
            trail = float(rng.uniform(0.05, 0.15))
            n_pauses = int(rng.integers(0, 3)) if duration > 2.2 else 0
            pause_s = [float(rng.uniform(0.08, 0.25)) for _ in range(n_pauses)]
            speech = duration - lead - trail - sum(pause_s)
            n_syl = max(2, int(round(speech * f["rate_syl_s"])))
            text = random_text(rng, n_syl, n_pauses)
            n_real_pauses = text.split().count("_")
            pause_s = pause_s[:n_real_pauses]
            f.update(
                utterance_id=f"{voice.speaker}_syn_{j + 1:04d}",
                duration=duration,
                lead_s=lead,
                trail_s=trail,
                pauses_s=";".join(f"{x:.4f}" for x in pause_s),
                n_syllables=n_syl,
                text=text,
            )
            rows.append(f)
    table = pd.DataFrame(rows)
    first = ["utterance_id", "speaker", "session", "gender", "emotion", "duration"]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values("utterance_id", kind="stable").reset_index(drop=True)



_PARTIAL = ".corpus.partial.json"


def _check_params(n_utterances: int, emotion_strength: float, confounding: float,
                  n_sessions: int, min_seconds: float, max_seconds: float,
                  sample_rate: int) -> None:
    if int(n_utterances) < 1:
        raise HcldError(f"n_utterances must be at least 1, got {n_utterances}")
    if not 0.0 <= float(emotion_strength) <= 1.0:
        raise HcldError(f"emotion_strength must lie in [0, 1], got {emotion_strength}")
    if not 0.0 <= float(confounding) <= 1.0:
        raise HcldError(f"confounding must lie in [0, 1], got {confounding}")
    if int(n_sessions) < 1:
        raise HcldError(f"n_sessions must be at least 1, got {n_sessions}")
    if not 0.5 <= float(min_seconds) <= float(max_seconds):
        raise HcldError(f"need 0.5 <= min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if int(sample_rate) < 8000:
        raise HcldError(f"sample_rate must be at least 8000 Hz, got {sample_rate}")


def synthesize_corpus(
    out_dir: str | Path,
    n_utterances: int = 1000,
    seed: int = 0,
    emotion_strength: float = 0.6,
    confounding: float = 0.3,
    n_sessions: int = 5,
    sample_rate: int = 16000,
    min_seconds: float = 1.5,
    max_seconds: float = 4.0,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Write the synthetic emotional-speech corpus to ``out_dir`` and return its utterance table.

    Args:
        out_dir: folder to create (or an empty one). Receives ``wav/<utterance_id>.wav`` (16-bit
            PCM), ``manifest.csv``, ``factors.csv`` and, written last, ``corpus.json``.
        n_utterances: corpus size, shared out evenly over the ``2 * n_sessions`` speakers.
        seed: everything (voices, emotions, prosody, text, noise) follows from it; the same seed
            and parameters give identical bytes.
        emotion_strength: 0 = no emotion cue at all, 1 = strong cues. The per-utterance variation
            is fixed, so the default 0.6 leaves a task that is not solved at 100 %.
        confounding: 0 = emotions evenly spread over speakers; 1 = each speaker strongly skewed
            towards some emotions (Dirichlet-drawn).
        n_sessions: sessions "Session1".."SessionN", one F and one M speaker each.
        sample_rate, min_seconds, max_seconds: audio format and utterance length range.
        progress: show a progress bar.
        workers: processes that render the audio (``None``: one per core when there are more
            than :data:`_PARALLEL_FROM` files to write, else 1). Every file depends only on the
            seed and its utterance, so the bytes are the same for any number.

    Returns:
        The utterance table, read back by :func:`hcld_lib.data.load_manifest` from the manifest.

    Idempotent and resumable: a folder that already holds a complete corpus with the same
    parameters is returned without regenerating; an interrupted run with the same parameters
    continues where it stopped; a folder made with other parameters raises :class:`HcldError`.
    """
    _check_params(n_utterances, emotion_strength, confounding, n_sessions, min_seconds,
                  max_seconds, sample_rate)
    if workers is not None and workers < 1:
        raise HcldError(f"workers={workers}: need at least one process to render the audio "
                        "(None: one per core)")
    out = Path(out_dir).expanduser().absolute()
    params = dict(
        generator="hcld_lib.synthetic", version=GENERATOR_VERSION, n_utterances=int(n_utterances),
        seed=int(seed), emotion_strength=float(emotion_strength), confounding=float(confounding),
        n_sessions=int(n_sessions), sample_rate=int(sample_rate), min_seconds=float(min_seconds),
        max_seconds=float(max_seconds),
    )
    done = out / "corpus.json"
    if done.exists():
        return _load_complete(out, params)
    _claim_folder(out, params)
    plan = plan_corpus(n_utterances, seed, emotion_strength, confounding, n_sessions,
                       min_seconds, max_seconds)
    _render_wavs(out, plan, seed, n_sessions, sample_rate, progress, workers)
    _write_tables(out, plan)
    atomic_write_json(done, params)
    (out / _PARTIAL).unlink(missing_ok=True)
    return load_manifest(out / "manifest.csv")


def _load_complete(out: Path, params: dict[str, Any]) -> pd.DataFrame:
    """The table of the complete corpus in ``out``, if it was made with ``params``."""
    stored = _read_params(out / "corpus.json")
    if stored != params:
        raise HcldError(_param_mismatch(out, stored, params))
    try:
        return load_manifest(out / "manifest.csv")
    except HcldError as exc:
        raise HcldError(f"{out} holds a damaged synthetic corpus: {exc}\ndelete the folder "
                        "and synthesize again") from exc


def _claim_folder(out: Path, params: dict[str, Any]) -> None:
    """Make ``out`` ready to (re)start a corpus with ``params`` and mark it as in progress.

    Accepts a new or empty folder, or an interrupted run with the same parameters.
    """
    partial = out / _PARTIAL
    if partial.exists():
        stored = _read_params(partial)
        if stored != params:
            raise HcldError(_param_mismatch(out, stored, params))
    elif out.exists() and any(out.iterdir()):
        raise HcldError(
            f"{out} is not empty and holds no synthetic corpus (no corpus.json): choose an empty "
            "or new folder for synthesize_corpus"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(partial, params)


_PARALLEL_FROM = 64
"""More files than this to render: one process per core by default (each forks in a few ms)."""


def _render_one(job: tuple[dict[str, Any], str, int, int, int]) -> None:
    """Render and write one utterance (a process pool's task): ``(record, path, seed, voice
    index, sample rate)``."""
    rec, path, seed, voice, sample_rate = job
    number = int(rec["utterance_id"].rsplit("_", 1)[1])
    rng = seeded_rng(seed, 4, voice, number)
    atomic_write_bytes(Path(path), wav_bytes(render_utterance(rec, sample_rate, rng), sample_rate))


def _render_wavs(out: Path, plan: pd.DataFrame, seed: int, n_sessions: int, sample_rate: int,
                 progress: bool, workers: int | None = None) -> None:
    """Write ``wav/<utterance_id>.wav`` for every row of ``plan`` that has no file yet.

    Utterance ``<speaker>_syn_<j>`` of the s-th speaker is rendered with
    ``seeded_rng(seed, 4, s, j)``, so a file does not depend on which others were already there,
    nor on which process rendered it.
    """
    wav_dir = out / "wav"
    wav_dir.mkdir(exist_ok=True)
    voices = {v.speaker: i for i, v in enumerate(make_speakers(n_sessions, seed))}
    records = plan.to_dict("records")
    paths = [wav_dir / f"{rec['utterance_id']}.wav" for rec in records]
    # files are written atomically: an existing one is complete
    jobs = [(rec, str(path), int(seed), voices[rec["speaker"]], int(sample_rate))
            for rec, path in zip(records, paths, strict=True) if not path.exists()]
    if workers is None:
        workers = (os.cpu_count() or 1) if len(jobs) > _PARALLEL_FROM else 1
    bar = progress_bar(total=len(records), desc="synthesizing", unit="utt", enabled=progress)
    bar.update(len(records) - len(jobs))
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            _render_one(job)
            bar.update(1)
    else:
        # fork: the children need nothing but this module, already imported
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            for _ in pool.imap_unordered(_render_one, jobs, chunksize=8):
                bar.update(1)
    bar.close()


def _write_tables(out: Path, plan: pd.DataFrame) -> None:
    """Write ``manifest.csv`` (durations to 0.1 ms) and ``factors.csv`` (6 significant digits)."""
    manifest = pd.DataFrame({
        "utterance_id": plan["utterance_id"],
        "path": "wav/" + plan["utterance_id"] + ".wav",
        "speaker": plan["speaker"],
        "emotion": plan["emotion"],
        "session": plan["session"],
        "gender": plan["gender"],
        "duration": plan["duration"],
    })
    atomic_write_text(out / "manifest.csv",
                      manifest.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
    atomic_write_text(out / "factors.csv",
                      plan.to_csv(index=False, float_format="%.6g", lineterminator="\n"))


def _read_params(path: Path) -> dict[str, Any]:
    return read_json(path, what="synthetic corpus parameters",
                     remedy=f"delete the folder {path.parent} and synthesize again")


def _param_mismatch(out: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    diff = {k: (stored.get(k), wanted.get(k)) for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)}
    shown = ", ".join(f"{k}: folder has {a!r}, asked for {b!r}" for k, (a, b) in diff.items())
    return (f"{out} holds a synthetic corpus made with other parameters ({shown}); choose another "
            "folder or delete this one")
