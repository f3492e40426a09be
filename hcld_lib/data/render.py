"""The sound of a synthetic utterance: a source-filter voice speaking random syllables.

3. **Text** (:func:`random_text`): a random string of consonant-vowel syllables (vowels
   /a i u e o/; stops with a closure and a noise burst, fricatives, nasals, approximants, /h/),
   grouped into words, with a few short pauses.
4. **Sound** (:func:`render_utterance`): a Rosenberg glottal-flow pulse train at the F0 contour,
   with per-cycle jitter and shimmer, differentiated (lip radiation), tilted by a one-pole
   low-pass, plus pitch-synchronous aspiration noise (breathiness), through a cascade of four
   two-pole (Klatt) resonators F1-F4 whose targets follow the phones and move smoothly between
   them; the filter runs block by block (10 ms) with its state carried over
   (``scipy.signal.lfilter``). Fricative noise and stop bursts are band-pass filtered noise added
   after the tract. The result is scaled to the utterance's loudness and written as 16-bit PCM
   (:func:`wav_bytes`).
"""

from __future__ import annotations

import io
import math
import wave
from typing import Any

import numpy as np
from scipy.signal import lfilter

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


def random_text(rng: np.random.Generator, n_syllables: int, n_pauses: int) -> str:
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


def _segment_bounds(f: dict[str, Any], segs: list[dict[str, Any]], n: int, sr: int) -> list[int]:
    """Segment boundaries in samples [n_seg + 1]: speech starts at ``lead_s``, and the free
    (non-pause) phone durations are scaled so that the utterance is exactly ``duration`` long.
    Boundaries past the end are clipped to ``n``.
    """
    fixed = float(f["lead_s"]) + float(f["trail_s"]) + sum(s["dur"] for s in segs if s.get("fixed"))
    free = sum(s["dur"] for s in segs if not s.get("fixed"))
    k_time = max((float(f["duration"]) - fixed) / free, 1e-3) if free > 0 else 1.0
    bounds = [0]
    t = float(f["lead_s"])
    for s in segs:
        t += s["dur"] if s.get("fixed") else s["dur"] * k_time
        bounds.append(int(round(t * sr)))
    bounds = [min(b, n) for b in bounds]
    bounds[0] = int(round(float(f["lead_s"]) * sr))
    return bounds


def _segment_targets(
    segs: list[dict[str, Any]], scale: float, nyq_cap: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-segment targets: formants F and bandwidths B [n_seg, 4] (Hz), voicing and aspiration
    levels [n_seg].

    Consonants take the colour of the following vowel (sets ``"vowel"`` on every segment); F is
    scaled by the speaker's ``formant_scale`` and capped at ``nyq_cap``.
    """
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
    return F, B, voice, asp


def _sample_segments(bounds: list[int], n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(seg_idx, active, speech_end)``: the segment of every sample [n] (the lead takes the
    first segment, the trail the last), whether the sample lies inside the speech [n], and the
    sample where the speech ends.
    """
    n_seg = len(bounds) - 1
    start0 = bounds[0]
    lengths = np.diff(np.asarray(bounds))
    speech_end = start0 + int(lengths.sum())
    seg_of_sample = np.full(n, -1, dtype=np.int64)
    seg_of_sample[start0:speech_end] = np.repeat(np.arange(n_seg), lengths)
    seg_of_sample = seg_of_sample[:n]
    active = seg_of_sample >= 0
    first_seg, last_seg = 0, n_seg - 1
    seg_idx = np.where(active, seg_of_sample, 0)
    seg_idx[:start0] = first_seg
    seg_idx[speech_end:] = last_seg
    return seg_idx, active, speech_end


def _amplitude_tracks(voice: np.ndarray, asp: np.ndarray, seg_idx: np.ndarray,
                      active: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample voicing and aspiration amplitudes [n], zero outside the speech, smoothed."""
    voice_amp = np.where(active, voice[seg_idx], 0.0)
    asp_amp = np.where(active, asp[seg_idx], 0.0)
    voice_amp = _smooth(voice_amp, int(0.012 * sr))
    asp_amp = _smooth(asp_amp, int(0.01 * sr))
    return voice_amp, asp_amp


def _formant_tracks(F: np.ndarray, B: np.ndarray, seg_idx: np.ndarray, breathiness: float,
                    sr: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(Fb, Bb, blk)``: formants and bandwidths per 10 ms block [n_blocks, 4] (sampled at the
    block centres, smoothed over 40 / 20 ms; F1 widened by ``breathiness``) and the block size.
    """
    n = len(seg_idx)
    blk = max(1, int(round(_BLOCK_SECONDS * sr)))
    n_blk = (n + blk - 1) // blk
    blk_seg = seg_idx[np.minimum(np.arange(n_blk) * blk + blk // 2, n - 1)]
    Fb = _smooth(F[blk_seg], max(1, int(round(0.04 / _BLOCK_SECONDS))))
    Bb = _smooth(B[blk_seg], max(1, int(round(0.02 / _BLOCK_SECONDS))))
    Bb[:, 0] *= 1.0 + 2.0 * float(breathiness)  # breathy voice: wider F1
    return Fb, Bb, blk


def _accents(segs: list[dict[str, Any]], bounds: list[int], tt: np.ndarray,
             sr: int) -> np.ndarray:
    """Pitch accents [n] (semitones / f0_range_st): a Gaussian bump on every accented vowel."""
    n = len(tt)
    accent = np.zeros(n)
    for i, s in enumerate(segs):
        if s["kind"] == "vowel" and s.get("accent"):
            c = 0.5 * (bounds[i] + bounds[i + 1]) / sr
            w = max((bounds[i + 1] - bounds[i]) / sr, 0.02)
            lo = max(int((c - 1.5 * w) * sr), 0)
            hi = min(int((c + 1.5 * w) * sr) + 1, n)
            accent[lo:hi] += 0.3 * np.exp(-0.5 * ((tt[lo:hi] - c) / (0.5 * w)) ** 2)
    return accent


def _f0_contour(f: dict[str, Any], segs: list[dict[str, Any]], bounds: list[int],
                speech_end: int, voiced: np.ndarray, sr: int,
                rng: np.random.Generator) -> np.ndarray:
    """F0 [n] (Hz): the utterance's contour shape plus accents and a slow random wander (draws
    two uniforms), in semitones around ``f0_mean_hz`` (zero mean over the voiced samples).
    """
    n = len(voiced)
    tt = np.arange(n) / sr
    speech_t0 = bounds[0] / sr
    speech_t1 = max(speech_end / sr, speech_t0 + 1e-3)
    x = np.clip((tt - speech_t0) / (speech_t1 - speech_t0), 0.0, 1.0)
    shape = {
        "fall": 0.5 - x,
        "rise": x - 0.5,
        "rise-fall": np.sin(np.pi * x) - 0.5,
        "flat": 0.08 * np.sin(2.0 * np.pi * x),
    }[f["contour"]]
    accent = _accents(segs, bounds, tt, sr)
    wander = 0.25 * np.sin(2 * np.pi * (0.7 + 0.6 * rng.random()) * tt + 2 * np.pi * rng.random())
    st = float(f["f0_range_st"]) * (shape + accent) + wander
    st -= st[voiced].mean() if voiced.any() else st.mean()
    return float(f["f0_mean_hz"]) * 2.0 ** (st / 12.0)


def _glottal_source(f: dict[str, Any], f0: np.ndarray, voiced: np.ndarray, sr: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(src, flow)`` [n]: Rosenberg glottal flow at ``f0`` with per-cycle jitter and shimmer
    (draws jitter, then shimmer), and its derivative (lip radiation) tilted by a one-pole
    low-pass, normalised to unit RMS over the voiced samples.
    """
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
    return src, flow


def _excitation(src: np.ndarray, flow: np.ndarray, breathiness: float, voice_amp: np.ndarray,
                asp_amp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tract input [n]: the voiced source plus pitch-synchronous breath noise, gated by the
    voicing track, plus the same noise (one draw of n normals) gated by the aspiration track.
    """
    noise = rng.standard_normal(len(src))
    aspiration = noise * (0.4 + 0.6 * flow / (flow.max() + 1e-12))
    return (src + float(breathiness) * 3.0 * aspiration) * voice_amp + noise * asp_amp


def _add_frication(out: np.ndarray, segs: list[dict[str, Any]], bounds: list[int],
                   voiced: np.ndarray, scale: float, sr: int, rng: np.random.Generator) -> None:
    """Add fricative noise and stop bursts to ``out`` in place, after the tract, at levels
    relative to the vowels' RMS (one band-noise draw per segment of at least 8 samples).
    """
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


def _loudness(out: np.ndarray, voice_amp: np.ndarray, energy_db: float, sr: int,
              rng: np.random.Generator) -> np.ndarray:
    """Scale ``out`` (in place) to ``energy_db`` over the voiced samples, add a -68 dB noise floor
    (one draw of n normals), fade 5 ms in and out, limit the peak to 0.98; float32 [n].
    """
    n = len(out)
    act = voice_amp > 0.5
    rms = float(np.sqrt(np.mean(out[act] ** 2))) if act.any() else float(np.sqrt(np.mean(out**2)))
    out *= 10.0 ** (float(energy_db) / 20.0) / (rms + 1e-12)
    out += 10.0 ** (-68.0 / 20.0) * rng.standard_normal(n)
    fade = min(int(0.005 * sr), n // 2)
    ramp = np.linspace(0.0, 1.0, fade)
    out[:fade] *= ramp
    out[n - fade:] *= ramp[::-1]
    peak = float(np.max(np.abs(out)))
    if peak > 0.98:
        out *= 0.98 / peak
    return out.astype(np.float32)


def render_utterance(f: dict[str, Any], sample_rate: int = 16000,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """Render one utterance from its factors (a row of :func:`plan_corpus`).

    Returns float32 samples in [-1, 1], shape [round(duration * sample_rate)].
    """
    rng = np.random.default_rng(0) if rng is None else rng
    sr = int(sample_rate)
    n = int(round(float(f["duration"]) * sr))
    scale = float(f["formant_scale"])

    # --- timing and per-segment targets -> per-sample / per-block control tracks ---
    segs = _segments(f)
    bounds = _segment_bounds(f, segs, n, sr)
    F, B, voice, asp = _segment_targets(segs, scale, 0.45 * sr)
    seg_idx, active, speech_end = _sample_segments(bounds, n)
    voice_amp, asp_amp = _amplitude_tracks(voice, asp, seg_idx, active, sr)
    Fb, Bb, blk = _formant_tracks(F, B, seg_idx, float(f["breathiness"]), sr)
    voiced = voice_amp > 0.5

    # --- the random draws, in this order: wander, jitter, shimmer, breath noise, bands, floor ---
    f0 = _f0_contour(f, segs, bounds, speech_end, voiced, sr, rng)
    src, flow = _glottal_source(f, f0, voiced, sr, rng)
    excitation = _excitation(src, flow, float(f["breathiness"]), voice_amp, asp_amp, rng)
    out = _tract_filter(excitation, Fb, Bb, blk, sr)
    _add_frication(out, segs, bounds, voiced, scale, sr, rng)
    return _loudness(out, voice_amp, float(f["energy_db"]), sr, rng)


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
