"""The embedded default corpus: synthetic emotional speech from a source-filter voice.

No download, deterministic from a seed, IEMOCAP-shaped (SPEC §2): ten speakers in five
"sessions" (one F and one M each), four emotions, utterances of 1.5-4 s at 16 kHz.

How an utterance is made
------------------------
1. **Speaker** (:class:`SpeakerVoice`): a base F0, a formant scale (the inverse of a relative
   vocal-tract length), a speaking rate, a spectral tilt, breathiness, jitter, shimmer, an open
   quotient and a loudness, all drawn from the seed (female voices higher in F0 and formants).
2. **Prosody** (:func:`utterance_factors`): each factor is the speaker's value, plus
   ``emotion_strength`` times the emotion's effect (:data:`EMOTION_EFFECTS`, relative to the
   speaker), plus per-utterance random variation of a size comparable to the emotion effects (so
   the task is not solved at 100 %). The F0 contour shape (fall / rise / rise-fall / flat) is drawn
   from a mix of a uniform choice and the emotion's preferences, weighted by ``emotion_strength``.
   All random numbers are drawn in the same order whatever the emotion, so at
   ``emotion_strength=0`` the factors do not depend on the emotion at all.
3. **Text**: a random string of consonant-vowel syllables (vowels /a i u e o/; stops with a
   closure and a noise burst, fricatives, nasals, approximants, /h/), grouped into words, with a
   few short pauses.
4. **Sound** (:func:`render_utterance`): a Rosenberg glottal-flow pulse train at the F0 contour,
   with per-cycle jitter and shimmer, differentiated (lip radiation), tilted by a one-pole
   low-pass, plus pitch-synchronous aspiration noise (breathiness), through a cascade of four
   two-pole (Klatt) resonators F1-F4 whose targets follow the phones and move smoothly between
   them; the filter runs block by block (10 ms) with its state carried over
   (``scipy.signal.lfilter``). Fricative noise and stop bursts are band-pass filtered noise added
   after the tract. The result is scaled to the utterance's loudness and written as 16-bit PCM.

:func:`synthesize_corpus` writes ``wav/<utterance_id>.wav``, ``manifest.csv`` (read by
:func:`hcld_lib.data.load_manifest`), ``factors.csv`` (every generating factor of every utterance)
and, last, ``corpus.json`` (the parameters; its presence marks a complete corpus).
"""

from __future__ import annotations

import io
import json
import math
import sys
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from hcld_lib.config import EMOTIONS
from hcld_lib.io import HcldError, atomic_write_bytes, atomic_write_json, atomic_write_text

GENERATOR_VERSION = 1
"""Bumped whenever the same parameters would produce different audio."""

CONTOURS: tuple[str, ...] = ("fall", "rise", "rise-fall", "flat")
"""F0 contour shapes over an utterance."""

#: Effect of each emotion at ``emotion_strength=1``, relative to the speaker's own voice.
#: ``f0_st``: F0 level shift (semitones); ``range``: factor on the F0 range; ``energy_db``:
#: loudness (dB); ``tempo``: factor on the syllable rate; ``tilt_db``: change of the source's
#: high-frequency attenuation (dB at 4 kHz; negative = flatter, "pressed/tense" voice);
#: ``breathiness``: added aspiration-to-voice ratio; ``jitter``/``shimmer``: factors;
#: ``open_quotient``: added glottal open quotient (lower = more pressed); ``contour``:
#: preferred contour probabilities in the order of :data:`CONTOURS`.
EMOTION_EFFECTS: dict[str, dict[str, Any]] = {
    "neu": dict(f0_st=0.0, range=1.0, energy_db=0.0, tempo=1.0, tilt_db=0.0, breathiness=0.0,
                jitter=1.0, shimmer=1.0, open_quotient=0.0, contour=(0.6, 0.1, 0.1, 0.2)),
    "hap": dict(f0_st=3.0, range=1.5, energy_db=3.0, tempo=1.1, tilt_db=-3.0, breathiness=-0.02,
                jitter=1.0, shimmer=1.0, open_quotient=-0.03, contour=(0.1, 0.3, 0.5, 0.1)),
    "ang": dict(f0_st=2.5, range=1.3, energy_db=7.0, tempo=1.12, tilt_db=-7.0, breathiness=-0.04,
                jitter=1.3, shimmer=1.2, open_quotient=-0.12, contour=(0.6, 0.05, 0.3, 0.05)),
    "sad": dict(f0_st=-2.0, range=0.55, energy_db=-5.0, tempo=0.8, tilt_db=6.0, breathiness=0.08,
                jitter=1.5, shimmer=1.4, open_quotient=0.1, contour=(0.3, 0.05, 0.05, 0.6)),
}

#: Standard deviation of the per-utterance random variation of each factor (independent of the
#: emotion and of ``emotion_strength``); log-scale for the multiplicative factors.
UTTERANCE_VARIATION: dict[str, float] = dict(
    f0_st=0.9, log_range=0.18, energy_db=1.8, log_tempo=0.07, tilt_db=1.8, breathiness=0.02,
    log_jitter=0.18, log_shimmer=0.14, open_quotient=0.03,
)
"""With these, a linear classifier given the true factors (and the speaker) reaches about 47 %,
70 % and 92 % accuracy at ``emotion_strength`` 0.3, 0.6 and 1.0 (2000 utterances, 5-fold);
models that must read the factors from audio do worse."""

# Vowel formant targets (Hz, adult male reference; F1-F4) and bandwidths.
_VOWELS: dict[str, tuple[float, float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0, 3400.0),
    "i": (270.0, 2290.0, 3010.0, 3700.0),
    "u": (300.0, 870.0, 2240.0, 3300.0),
    "e": (530.0, 1840.0, 2480.0, 3500.0),
    "o": (570.0, 840.0, 2410.0, 3300.0),
}
_VOWEL_BW = (70.0, 100.0, 140.0, 180.0)

# Consonants: kind, voicing, formant targets (loci), noise band (centre, bandwidth, level re vowel).
_CONSONANTS: dict[str, dict[str, Any]] = {
    "p": dict(kind="stop", voiced=False, F=(300, 800, 2200, 3300), noise=(900, 1200, 0.5)),
    "t": dict(kind="stop", voiced=False, F=(300, 1800, 2700, 3500), noise=(4000, 2500, 0.7)),
    "k": dict(kind="stop", voiced=False, F=(300, 2200, 2500, 3400), noise=(2000, 800, 0.7)),
    "b": dict(kind="stop", voiced=True, F=(250, 800, 2200, 3300), noise=(900, 1200, 0.3)),
    "d": dict(kind="stop", voiced=True, F=(250, 1700, 2700, 3500), noise=(4000, 2500, 0.4)),
    "g": dict(kind="stop", voiced=True, F=(250, 2100, 2500, 3400), noise=(2000, 800, 0.4)),
    "s": dict(kind="fricative", voiced=False, F=(350, 1700, 2700, 3500), noise=(5500, 2500, 0.5)),
    "sh": dict(kind="fricative", voiced=False, F=(350, 1900, 2500, 3400), noise=(3000, 1500, 0.5)),
    "f": dict(kind="fricative", voiced=False, F=(350, 1000, 2300, 3300), noise=(4500, 5000, 0.12)),
    "z": dict(kind="fricative", voiced=True, F=(300, 1700, 2700, 3500), noise=(5500, 2500, 0.3)),
    "v": dict(kind="fricative", voiced=True, F=(300, 1000, 2300, 3300), noise=(4500, 5000, 0.08)),
    "h": dict(kind="aspirate", voiced=False, F=None, noise=None),
    "m": dict(kind="nasal", voiced=True, F=(250, 1100, 2200, 3200), noise=None),
    "n": dict(kind="nasal", voiced=True, F=(250, 1600, 2500, 3300), noise=None),
    "l": dict(kind="approximant", voiced=True, F=(350, 1100, 2700, 3400), noise=None),
    "r": dict(kind="approximant", voiced=True, F=(400, 1150, 1650, 3200), noise=None),
    "w": dict(kind="approximant", voiced=True, F=(300, 700, 2300, 3300), noise=None),
    "j": dict(kind="approximant", voiced=True, F=(280, 2200, 2900, 3500), noise=None),
}
_CONSONANT_NAMES = tuple(_CONSONANTS)
_VOWEL_NAMES = tuple(_VOWELS)

_BLOCK_SECONDS = 0.01  # formant filter coefficients change every 10 ms (state carried over)


@dataclass(frozen=True)
class SpeakerVoice:
    """One synthetic speaker's voice (the values every emotion is rendered relative to)."""

    speaker: str
    session: str
    gender: str
    f0_hz: float
    """Base F0 (Hz) of neutral speech."""
    f0_range_st: float
    """Base F0 excursion of the contour (semitones, peak to trough)."""
    formant_scale: float
    """Formant frequencies = male reference x this (1 / relative vocal-tract length)."""
    rate_syl_s: float
    """Neutral speaking rate (syllables per second)."""
    tilt_db: float
    """Source attenuation at 4 kHz by the tilt low-pass (dB)."""
    breathiness: float
    """Aspiration noise relative to the voice source (RMS ratio)."""
    jitter: float
    """Relative standard deviation of the glottal period from cycle to cycle."""
    shimmer: float
    """Relative standard deviation of the glottal pulse amplitude from cycle to cycle."""
    open_quotient: float
    """Share of the glottal cycle the glottis is open."""
    energy_db: float
    """Loudness of neutral speech (RMS of the active part, dBFS)."""

    @property
    def vtl_factor(self) -> float:
        """Vocal-tract length relative to the male reference (= 1 / ``formant_scale``)."""
        return 1.0 / self.formant_scale


def _rng(seed: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *tags]))


def make_speakers(n_sessions: int = 5, seed: int = 0) -> list[SpeakerVoice]:
    """Draw the voices of ``2 * n_sessions`` speakers (Ses01F, Ses01M, Ses02F, ...)."""
    if n_sessions < 1:
        raise HcldError(f"n_sessions must be at least 1, got {n_sessions}")
    rng = _rng(seed, 1)
    voices = []
    for s in range(1, n_sessions + 1):
        for gender in ("F", "M"):
            female = gender == "F"
            z = rng.standard_normal(10)
            voices.append(SpeakerVoice(
                speaker=f"Ses{s:02d}{gender}",
                session=f"Session{s}",
                gender=gender,
                f0_hz=float((205.0 if female else 115.0) * math.exp(0.12 * z[0])),
                f0_range_st=float(4.0 * math.exp(0.15 * z[1])),
                formant_scale=float((1.17 if female else 1.0) * math.exp(0.04 * z[2])),
                rate_syl_s=float(4.5 * math.exp(0.1 * z[3])),
                tilt_db=float(9.0 + 2.0 * z[4]),
                breathiness=float(np.clip((0.12 if female else 0.07) + 0.02 * z[5], 0.02, 0.3)),
                jitter=float(0.008 * math.exp(0.2 * z[6])),
                shimmer=float(0.04 * math.exp(0.2 * z[7])),
                open_quotient=float(np.clip((0.65 if female else 0.55) + 0.04 * z[8], 0.4, 0.8)),
                energy_db=float(-27.0 + 1.5 * z[9]),
            ))
    return voices


def utterance_factors(
    voice: SpeakerVoice, emotion: str, emotion_strength: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Prosody and voice-quality factors of one utterance of ``voice`` in ``emotion``.

    factor = speaker value + ``emotion_strength`` x emotion effect + random variation, on a log
    scale for the multiplicative factors (F0, range, tempo, jitter, shimmer). The same number of
    random values is drawn in the same order for every emotion, so with ``emotion_strength=0`` the
    result does not depend on ``emotion``.
    """
    if emotion not in EMOTION_EFFECTS:
        raise HcldError(f"unknown emotion {emotion!r}; the synthetic voice renders {EMOTIONS}")
    eff = EMOTION_EFFECTS[emotion]
    var = UTTERANCE_VARIATION
    s = float(emotion_strength)
    z = rng.standard_normal(9)
    u_contour = rng.random()
    f0_st = s * eff["f0_st"] + var["f0_st"] * z[0]
    log_range = s * math.log(eff["range"]) + var["log_range"] * z[1]
    energy = voice.energy_db + s * eff["energy_db"] + var["energy_db"] * z[2]
    log_tempo = s * math.log(eff["tempo"]) + var["log_tempo"] * z[3]
    tilt = voice.tilt_db + s * eff["tilt_db"] + var["tilt_db"] * z[4]
    breath = voice.breathiness + s * eff["breathiness"] + var["breathiness"] * z[5]
    log_jitter = s * math.log(eff["jitter"]) + var["log_jitter"] * z[6]
    log_shimmer = s * math.log(eff["shimmer"]) + var["log_shimmer"] * z[7]
    oq = voice.open_quotient + s * eff["open_quotient"] + var["open_quotient"] * z[8]
    p = (1.0 - s) * np.full(len(CONTOURS), 1.0 / len(CONTOURS)) + s * np.asarray(eff["contour"])
    contour = CONTOURS[min(int(np.searchsorted(np.cumsum(p / p.sum()), u_contour, "right")),
                           len(CONTOURS) - 1)]
    return dict(
        speaker=voice.speaker,
        session=voice.session,
        gender=voice.gender,
        emotion=emotion,
        emotion_strength=s,
        f0_mean_hz=voice.f0_hz * 2.0 ** (f0_st / 12.0),
        f0_shift_st=f0_st,
        f0_range_st=voice.f0_range_st * math.exp(log_range),
        contour=contour,
        tempo=math.exp(log_tempo),
        rate_syl_s=voice.rate_syl_s * math.exp(log_tempo),
        energy_db=energy,
        tilt_db=float(np.clip(tilt, 0.5, 30.0)),
        breathiness=float(np.clip(breath, 0.0, 0.5)),
        jitter=voice.jitter * math.exp(log_jitter),
        shimmer=voice.shimmer * math.exp(log_shimmer),
        open_quotient=float(np.clip(oq, 0.3, 0.9)),
        formant_scale=voice.formant_scale,
        vtl_factor=voice.vtl_factor,
        speaker_f0_hz=voice.f0_hz,
    )


def _random_text(rng: np.random.Generator, n_syllables: int, n_pauses: int) -> str:
    """Syllables joined by '-', words by ' ', pauses as ' _ ' (e.g. ``"ba-ti so _ me-na-ku"``)."""
    words: list[str] = []
    left = n_syllables
    while left > 0:
        size = int(min(left, rng.integers(1, 4)))
        syls = []
        for _ in range(size):
            vowel = _VOWEL_NAMES[rng.integers(len(_VOWEL_NAMES))]
            if rng.random() < 0.12:
                syls.append(vowel)
            else:
                syls.append(_CONSONANT_NAMES[rng.integers(len(_CONSONANT_NAMES))] + vowel)
        words.append("-".join(syls))
        left -= size
    if len(words) > 1 and n_pauses > 0:
        gaps = rng.choice(np.arange(1, len(words)), size=min(n_pauses, len(words) - 1),
                          replace=False)
        for g in sorted(gaps.tolist(), reverse=True):
            words.insert(g, "_")
    return " ".join(words)


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
    alloc_rng = _rng(seed, 2)
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
            rng = _rng(seed, 3, si, j)
            f = utterance_factors(voice, emotion, emotion_strength, rng)
            duration = float(rng.uniform(min_seconds, max_seconds))
            lead = float(rng.uniform(0.05, 0.15))
            trail = float(rng.uniform(0.05, 0.15))
            n_pauses = int(rng.integers(0, 3)) if duration > 2.2 else 0
            pause_s = [float(rng.uniform(0.08, 0.25)) for _ in range(n_pauses)]
            speech = duration - lead - trail - sum(pause_s)
            n_syl = max(2, int(round(speech * f["rate_syl_s"])))
            text = _random_text(rng, n_syl, n_pauses)
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


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _rosenberg(phi: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg-C glottal flow over a cycle phase ``phi`` in [0, 1): rise, faster fall, closed."""
    tp = 0.7 * open_quotient
    tn = 0.3 * open_quotient
    g = np.zeros_like(phi)
    rise = phi < tp
    g[rise] = 0.5 * (1.0 - np.cos(np.pi * phi[rise] / tp))
    fall = (~rise) & (phi < tp + tn)
    g[fall] = np.cos(0.5 * np.pi * (phi[fall] - tp) / tn)
    return g


def _tilt_coefficient(tilt_db: float, sample_rate: int, freq: float = 4000.0) -> float:
    """Pole ``a`` of the one-pole low-pass (1-a)/(1-a z^-1) attenuating ``tilt_db`` at ``freq``."""
    w = 2.0 * np.pi * min(freq, 0.45 * sample_rate) / sample_rate
    att = 10.0 ** (-tilt_db / 10.0)  # power ratio at w relative to DC
    c = math.cos(w)
    if att >= 1.0:
        return 0.0
    b = 1.0 - att * c
    return float((b - math.sqrt(max(b * b - (1.0 - att) ** 2, 0.0))) / (1.0 - att))


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Triangular moving average (two boxcars of ``width // 2 + 1``) along axis 0.

    Edges are padded with the end values; the output has the input's shape.
    """
    if width <= 2:
        return x
    half = width // 2 + 1
    y = x
    for _ in range(2):
        pad_lo, pad_hi = half // 2, half - 1 - half // 2
        yp = np.concatenate([np.repeat(y[:1], pad_lo + 1, axis=0), y,
                             np.repeat(y[-1:], pad_hi, axis=0)])
        c = np.cumsum(yp, axis=0)
        y = (c[half:] - c[:-half]) / half
    return y


def _band_noise(rng: np.random.Generator, n: int, centre: float, bw: float,
                sample_rate: int) -> np.ndarray:
    """White noise through a two-pole resonator at ``centre`` (Hz) with bandwidth ``bw``."""
    centre = min(centre, 0.45 * sample_rate)
    r = math.exp(-math.pi * bw / sample_rate)
    a = [1.0, -2.0 * r * math.cos(2.0 * math.pi * centre / sample_rate), r * r]
    y = lfilter([1.0 - r], a, rng.standard_normal(n))
    return y / (np.sqrt(np.mean(y * y)) + 1e-12)


def _tract_filter(x: np.ndarray, freqs: np.ndarray, bws: np.ndarray, block: int,
                  sample_rate: int) -> np.ndarray:
    """Cascade of two-pole resonators with time-varying targets, run block by block.

    Resonator k in block j: y[n] = A x[n] + B y[n-1] + C y[n-2] with C = -exp(-2 pi bw / sr),
    B = 2 exp(-pi bw / sr) cos(2 pi f / sr), A = 1 - B - C (unit gain at 0 Hz; Klatt 1980).
    The cascade of one block is multiplied out into a single all-pole section (order 2K) and run
    with ``scipy.signal.lfilter``, its state carried from block to block.

    Shapes: ``x`` [N]; ``freqs``, ``bws`` [n_blocks, K] (Hz), n_blocks = ceil(N / block).
    """
    r = np.exp(-np.pi * bws / sample_rate)
    b1 = 2.0 * r * np.cos(2.0 * np.pi * freqs / sample_rate)
    c1 = -(r * r)
    n_blk, n_res = freqs.shape
    den = np.ones((n_blk, 1))
    for k in range(n_res):  # polynomial product of the K sections, all blocks at once
        nxt = np.zeros((n_blk, den.shape[1] + 2))
        nxt[:, :-2] += den
        nxt[:, 1:-1] -= b1[:, k : k + 1] * den
        nxt[:, 2:] -= c1[:, k : k + 1] * den
        den = nxt
    gain = np.prod(1.0 - b1 - c1, axis=1)
    out = np.empty_like(x)
    zi = np.zeros(2 * n_res)
    n = len(x)
    for j in range(n_blk):
        lo, hi = j * block, min((j + 1) * block, n)
        out[lo:hi], zi = lfilter(gain[j : j + 1], den[j], x[lo:hi], zi=zi)
    return out


def _segments(f: dict[str, Any]) -> list[dict[str, Any]]:
    """Phone segments (name, kind, relative duration, targets) of an utterance's text."""
    segs: list[dict[str, Any]] = []
    tokens = f["text"].split()
    pauses = [float(x) for x in str(f.get("pauses_s", "") or "").split(";") if x]
    n_words = sum(t != "_" for t in tokens)
    word_i = 0
    pause_i = 0
    for tok in tokens:
        if tok == "_":
            segs.append(dict(kind="pause", dur=pauses[pause_i] if pause_i < len(pauses) else 0.15,
                              fixed=True))
            pause_i += 1
            continue
        word_i += 1
        syls = tok.split("-")
        for k, syl in enumerate(syls):
            vowel = syl[-1]
            cons = syl[:-1]
            stress = 1.15 if k == 0 else 1.0
            final = 1.3 if (word_i == n_words and k == len(syls) - 1) else 1.0
            if cons:
                c = _CONSONANTS[cons]
                kind = c["kind"]
                if kind == "stop":
                    segs.append(dict(kind="closure", cons=cons, dur=0.13))
                    segs.append(dict(kind="burst", cons=cons, dur=0.035))
                    if not c["voiced"]:
                        segs.append(dict(kind="aspiration", cons=cons, vowel=vowel, dur=0.07))
                elif kind == "fricative":
                    segs.append(dict(kind="fricative", cons=cons, dur=0.28))
                elif kind == "aspirate":
                    segs.append(dict(kind="aspiration", cons=cons, vowel=vowel, dur=0.18))
                else:
                    segs.append(dict(kind=kind, cons=cons, dur=0.2))
            vdur = (0.62 if cons else 0.8) * stress * final
            segs.append(dict(kind="vowel", vowel=vowel, dur=vdur, accent=(k == 0)))
    return segs


def render_utterance(f: dict[str, Any], sample_rate: int = 16000,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one utterance from its factors (a row of :func:`plan_corpus`).

    Returns float32 samples in [-1, 1], shape [round(duration * sample_rate)].
    """
    rng = np.random.default_rng(0) if rng is None else rng
    sr = int(sample_rate)
    n = int(round(float(f["duration"]) * sr))
    scale = float(f["formant_scale"])
    nyq_cap = 0.45 * sr

    # --- timing: scale phone durations so that the utterance is exactly `duration` long ---
    segs = _segments(f)
    fixed = float(f["lead_s"]) + float(f["trail_s"]) + sum(s["dur"] for s in segs if s.get("fixed"))
    free = sum(s["dur"] for s in segs if not s.get("fixed"))
    k_time = max((float(f["duration"]) - fixed) / free, 1e-3) if free > 0 else 1.0
    bounds = [0]
    t = float(f["lead_s"])
    for s in segs:
        t += s["dur"] if s.get("fixed") else s["dur"] * k_time
        bounds.append(int(round(t * sr)))
    bounds = [min(b, n) for b in bounds]
    start0 = int(round(float(f["lead_s"]) * sr))
    bounds[0] = start0

    # --- per-segment targets -> per-sample / per-block control tracks ---
    n_seg = len(segs)
    F = np.zeros((n_seg, 4))
    B = np.tile(np.array(_VOWEL_BW), (n_seg, 1))
    voice = np.zeros(n_seg)
    asp = np.zeros(n_seg)
    next_vowel = "a"
    for i in range(n_seg - 1, -1, -1):  # backwards: consonants take the following vowel's colour
        s = segs[i]
        if s["kind"] == "vowel":
            next_vowel = s["vowel"]
        s.setdefault("vowel", next_vowel)
    for i, s in enumerate(segs):
        kind = s["kind"]
        vt = np.array(_VOWELS[s["vowel"]])
        if kind == "vowel":
            F[i] = vt
            voice[i] = 1.0
        elif kind == "pause":
            F[i] = F[i - 1] if i > 0 else vt
        else:
            c = _CONSONANTS[s["cons"]]
            loci = np.array(c["F"] if c["F"] is not None else vt, dtype=float)
            F[i] = 0.5 * (loci + vt) if kind in ("burst", "aspiration") else loci
            if kind == "closure":
                voice[i] = 0.12 if c["voiced"] else 0.0
            elif kind == "burst":
                voice[i] = 0.3 if c["voiced"] else 0.0
            elif kind == "aspiration":
                asp[i] = 0.6
                F[i] = vt
            elif kind == "fricative":
                voice[i] = 0.35 if c["voiced"] else 0.0
            elif kind == "nasal":
                voice[i] = 0.45
                B[i] = (90.0, 250.0, 300.0, 400.0)
            else:  # approximant
                voice[i] = 0.7
                B[i] = (80.0, 120.0, 160.0, 200.0)
    F = np.minimum(F * scale, nyq_cap)

    lengths = np.diff(np.asarray(bounds))
    seg_of_sample = np.full(n, -1, dtype=np.int64)
    seg_of_sample[start0:start0 + int(lengths.sum())] = np.repeat(np.arange(n_seg), lengths)
    seg_of_sample = seg_of_sample[:n]
    active = seg_of_sample >= 0
    first_seg, last_seg = 0, n_seg - 1
    seg_idx = np.where(active, seg_of_sample, 0)
    seg_idx[:start0] = first_seg
    seg_idx[start0 + int(lengths.sum()):] = last_seg

    voice_amp = np.where(active, voice[seg_idx], 0.0)
    asp_amp = np.where(active, asp[seg_idx], 0.0)
    voice_amp = _smooth(voice_amp, int(0.012 * sr))
    asp_amp = _smooth(asp_amp, int(0.01 * sr))

    blk = max(1, int(round(_BLOCK_SECONDS * sr)))
    n_blk = (n + blk - 1) // blk
    blk_seg = seg_idx[np.minimum(np.arange(n_blk) * blk + blk // 2, n - 1)]
    Fb = _smooth(F[blk_seg], max(1, int(round(0.04 / _BLOCK_SECONDS))))
    Bb = _smooth(B[blk_seg], max(1, int(round(0.02 / _BLOCK_SECONDS))))
    Bb[:, 0] *= 1.0 + 2.0 * float(f["breathiness"])  # breathy voice: wider F1

    # --- F0 contour (semitones around the utterance mean) ---
    tt = np.arange(n) / sr
    speech_t0 = start0 / sr
    speech_t1 = max((start0 + int(lengths.sum())) / sr, speech_t0 + 1e-3)
    x = np.clip((tt - speech_t0) / (speech_t1 - speech_t0), 0.0, 1.0)
    shape = {
        "fall": 0.5 - x,
        "rise": x - 0.5,
        "rise-fall": np.sin(np.pi * x) - 0.5,
        "flat": 0.08 * np.sin(2.0 * np.pi * x),
    }[f["contour"]]
    accent = np.zeros(n)
    for i, s in enumerate(segs):
        if s["kind"] == "vowel" and s.get("accent"):
            c = 0.5 * (bounds[i] + bounds[i + 1]) / sr
            w = max((bounds[i + 1] - bounds[i]) / sr, 0.02)
            lo = max(int((c - 1.5 * w) * sr), 0)
            hi = min(int((c + 1.5 * w) * sr) + 1, n)
            accent[lo:hi] += 0.3 * np.exp(-0.5 * ((tt[lo:hi] - c) / (0.5 * w)) ** 2)
    wander = 0.25 * np.sin(2 * np.pi * (0.7 + 0.6 * rng.random()) * tt + 2 * np.pi * rng.random())
    st = float(f["f0_range_st"]) * (shape + accent) + wander
    voiced = voice_amp > 0.5
    st -= st[voiced].mean() if voiced.any() else st.mean()
    f0 = float(f["f0_mean_hz"]) * 2.0 ** (st / 12.0)

    # --- glottal source: Rosenberg pulses with jitter and shimmer, radiation, tilt ---
    phase0 = np.cumsum(f0 / sr)
    n_cyc = int(phase0[-1]) + 2
    jit = 1.0 + float(f["jitter"]) * rng.standard_normal(n_cyc)
    f0j = f0 * jit[phase0.astype(np.int64)]
    phase = np.cumsum(f0j / sr)
    cyc = phase.astype(np.int64)
    phi = phase - cyc
    shim = np.clip(1.0 + float(f["shimmer"]) * rng.standard_normal(n_cyc + 2), 0.3, None)
    flow = _rosenberg(phi, float(f["open_quotient"])) * shim[cyc]
    src = np.diff(flow, prepend=0.0)
    a = _tilt_coefficient(float(f["tilt_db"]), sr)
    src = lfilter([1.0 - a], [1.0, -a], src)
    src /= np.sqrt(np.mean(src[voiced] ** 2)) + 1e-12 if voiced.any() else 1.0
    noise = rng.standard_normal(n)
    aspiration = noise * (0.4 + 0.6 * flow / (flow.max() + 1e-12))
    excitation = (src + float(f["breathiness"]) * 3.0 * aspiration) * voice_amp + noise * asp_amp

    # --- vocal tract: cascade of four Klatt resonators, coefficients per 10 ms block ---
    out = _tract_filter(excitation, Fb, Bb, blk, sr)

    # --- frication and bursts after the tract, levels relative to the vowels ---
    vowel_rms = float(np.sqrt(np.mean(out[voiced] ** 2))) if voiced.any() else 1.0
    for i, s in enumerate(segs):
        if s["kind"] not in ("burst", "fricative") or "cons" not in s:
            continue
        centre, bw, level = _CONSONANTS[s["cons"]]["noise"]
        lo, hi = bounds[i], bounds[i + 1]
        if hi - lo < 8:
            continue
        m = hi - lo
        env = np.hanning(m) if s["kind"] == "fricative" else np.exp(-np.arange(m) / (0.3 * m))
        if s["kind"] == "burst":
            env[: min(8, m)] *= np.linspace(0.0, 1.0, min(8, m))
        out[lo:hi] += level * vowel_rms * env * _band_noise(rng, m, centre * scale,
                                                            bw * scale, sr)

    # --- loudness, noise floor, fades, limiter ---
    act = voice_amp > 0.5
    rms = float(np.sqrt(np.mean(out[act] ** 2))) if act.any() else float(np.sqrt(np.mean(out**2)))
    out *= 10.0 ** (float(f["energy_db"]) / 20.0) / (rms + 1e-12)
    out += 10.0 ** (-68.0 / 20.0) * rng.standard_normal(n)
    fade = min(int(0.005 * sr), n // 2)
    ramp = np.linspace(0.0, 1.0, fade)
    out[:fade] *= ramp
    out[n - fade:] *= ramp[::-1]
    peak = float(np.max(np.abs(out)))
    if peak > 0.98:
        out *= 0.98 / peak
    return out.astype(np.float32)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV file contents of float samples in [-1, 1] (deterministic bytes)."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32767.0), -32768, 32767)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# The corpus on disk
# ----------------------------------------------------------------------------------------------

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

    Returns:
        The utterance table, read back by :func:`hcld_lib.data.load_manifest` from the manifest.

    Idempotent and resumable: a folder that already holds a complete corpus with the same
    parameters is returned without regenerating; an interrupted run with the same parameters
    continues where it stopped; a folder made with other parameters raises :class:`HcldError`.
    """
    from hcld_lib.data import load_manifest  # late import: data re-exports this function

    _check_params(n_utterances, emotion_strength, confounding, n_sessions, min_seconds,
                  max_seconds, sample_rate)
    out = Path(out_dir).expanduser().absolute()
    params = dict(
        generator="hcld_lib.synthetic", version=GENERATOR_VERSION, n_utterances=int(n_utterances),
        seed=int(seed), emotion_strength=float(emotion_strength), confounding=float(confounding),
        n_sessions=int(n_sessions), sample_rate=int(sample_rate), min_seconds=float(min_seconds),
        max_seconds=float(max_seconds),
    )
    done = out / "corpus.json"
    partial = out / _PARTIAL
    if done.exists():
        stored = _read_params(done)
        if stored != params:
            raise HcldError(_param_mismatch(out, stored, params))
        try:
            return load_manifest(out / "manifest.csv")
        except HcldError as exc:
            raise HcldError(f"{out} holds a damaged synthetic corpus: {exc}\ndelete the folder "
                            "and synthesize again") from exc
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

    plan = plan_corpus(n_utterances, seed, emotion_strength, confounding, n_sessions,
                       min_seconds, max_seconds)
    wav_dir = out / "wav"
    wav_dir.mkdir(exist_ok=True)
    voices = {v.speaker: i for i, v in enumerate(make_speakers(n_sessions, seed))}
    records = plan.to_dict("records")
    bar = _progress(len(records), progress)
    for rec in records:
        path = wav_dir / f"{rec['utterance_id']}.wav"
        if not path.exists():  # files are written atomically: an existing one is complete
            number = int(rec["utterance_id"].rsplit("_", 1)[1])
            rng = _rng(seed, 4, voices[rec["speaker"]], number)
            atomic_write_bytes(path, wav_bytes(render_utterance(rec, sample_rate, rng),
                                               sample_rate))
        bar(1)
    bar(0, close=True)

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
    atomic_write_json(done, params)
    partial.unlink(missing_ok=True)
    return load_manifest(out / "manifest.csv")


def _read_params(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HcldError(f"cannot read {path} ({exc}): delete the folder {path.parent} and "
                        "synthesize again") from exc


def _param_mismatch(out: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    diff = {k: (stored.get(k), wanted.get(k)) for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)}
    shown = ", ".join(f"{k}: folder has {a!r}, asked for {b!r}" for k, (a, b) in diff.items())
    return (f"{out} holds a synthetic corpus made with other parameters ({shown}); choose another "
            "folder or delete this one")


def _progress(total: int, enabled: bool):
    """A tiny progress callback: tqdm when available, a stderr line otherwise, or nothing."""
    if not enabled:
        return lambda k, close=False: None
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="synthesizing", unit="utt")

        def update(k: int, close: bool = False) -> None:
            bar.update(k)
            if close:
                bar.close()

        return update
    except ImportError:
        state = {"n": 0}

        def update(k: int, close: bool = False) -> None:
            state["n"] += k
            if close or state["n"] % max(1, total // 10) == 0:
                print(f"synthesizing {state['n']}/{total}", file=sys.stderr)

        return update


__all__ = [
    "CONTOURS",
    "EMOTION_EFFECTS",
    "UTTERANCE_VARIATION",
    "SpeakerVoice",
    "make_speakers",
    "plan_corpus",
    "render_utterance",
    "synthesize_corpus",
    "utterance_factors",
    "wav_bytes",
]
