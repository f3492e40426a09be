"""Reading audio: one waveform per utterance, mono, at the encoder's sample rate, fixed length.

Every feature extractor in ``hcld_lib.features`` reads audio through :func:`load_audio`, so a
clip is decoded, mixed, resampled and trimmed the same way whatever the backbone. Files are read
with ``soundfile`` (WAV, FLAC, OGG/Vorbis, ...); compressed formats it cannot open (MP3, M4A)
must be converted first, e.g. ``ffmpeg -i in.m4a -ar 16000 out.wav``.

Samples are checked before anything is computed from them: a NaN or infinite sample, or one
louder than :data:`MAX_ABS_SAMPLE` (100) in absolute value, is refused naming the file. Integer
PCM (16/24/32-bit) always decodes within [-1, 1); float WAVs normally hold [-1, 1] too, and the
bound leaves 40 dB of headroom above full scale for float masters that clip a little, while
catching the mis-scaled ones (integer sample values written as float reach 32768) and garbage
(1e30) that would overflow the encoders into NaN features.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from hcld_lib.io import HcldError

__all__ = ["MAX_ABS_SAMPLE", "audio_num_samples", "load_audio", "resample"]

MAX_ABS_SAMPLE = 100.0
"""The loudest sample accepted, in absolute value (full scale is 1; see the module docstring)."""

# torchaudio's "kaiser_best" setting: a long windowed-sinc kernel, rolloff just below Nyquist.
_RESAMPLE_KW = dict(
    lowpass_filter_width=64,
    rolloff=0.9475937167399596,
    resampling_method="sinc_interp_kaiser",
    beta=14.769656459379492,
)


def _read_error(path: Path, err: BaseException) -> HcldError:
    return HcldError(
        f"cannot read audio file {path}: {err}. It must be audio that soundfile can decode "
        "(WAV, FLAC, OGG/Vorbis); convert other formats first, e.g. "
        "`ffmpeg -i input.m4a -ac 1 -ar 16000 output.wav`, and fix the table's `path` column."
    )


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise HcldError(
            f"audio file {path} does not exist (or is not a file): check the `path` column of the "
            "utterance table (paths must be absolute or relative to the working directory)."
        )


def _target_samples(max_seconds: float | None, sample_rate: int) -> int | None:
    if max_seconds is None:
        return None
    if not max_seconds > 0:
        raise HcldError(f"max_seconds must be positive or None, got {max_seconds!r}")
    return int(round(max_seconds * sample_rate))


def _resampled_length(n: int, orig_sr: int, new_sr: int) -> int:
    """Samples produced by :func:`resample`: ``ceil(n * new_sr / orig_sr)``."""
    if orig_sr == new_sr:
        return n
    g = math.gcd(orig_sr, new_sr)
    return -(-n * (new_sr // g) // (orig_sr // g))


def audio_num_samples(
    path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = None
) -> int:
    """Valid length (samples) that :func:`load_audio` returns for ``path``, from the header only.

    Raises:
        HcldError: if the file is missing, unreadable, not audio or empty.
    """
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise _read_error(path, err) from err
    if info.frames <= 0:
        raise HcldError(
            f"audio file {path} has no samples: remove it from the table or replace it."
        )
    n = _resampled_length(int(info.frames), int(info.samplerate), int(sample_rate))
    target = _target_samples(max_seconds, sample_rate)
    return n if target is None else min(n, target)


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int):  # noqa: ANN202 - returns a torchaudio transform
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr, **_RESAMPLE_KW)


def resample(waveform: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling of a mono float32 waveform ``[N] -> [ceil(N * new_sr / orig_sr)]``.

    A Kaiser-windowed sinc (torchaudio's ``kaiser_best`` setting), deterministic on CPU.
    """
    if orig_sr == new_sr:
        return waveform
    import torch

    with torch.inference_mode():
        out = _resampler(int(orig_sr), int(new_sr))(
            torch.from_numpy(np.ascontiguousarray(waveform))
        )
    return out.numpy().astype(np.float32, copy=False)


def _check_samples(path: Path, data: np.ndarray) -> None:
    """Refuse non-finite samples and samples beyond :data:`MAX_ABS_SAMPLE`, naming the file."""
    finite = np.isfinite(data)
    if not finite.all():
        first = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise HcldError(
            f"audio file {path} contains {int((~finite).sum())} NaN or infinite samples (the "
            f"first at sample {first}): it is damaged; re-export it, or remove it from the table.")
    peak = float(np.abs(data).max())
    if peak > MAX_ABS_SAMPLE:
        raise HcldError(
            f"audio file {path} has samples up to {peak:.3g} in absolute value; audio should lie "
            f"within [-1, 1] (hcld accepts up to {MAX_ABS_SAMPLE:g}). A float file this loud is "
            "mis-scaled (integer sample values written as float?) or damaged: re-export it "
            "normalised to [-1, 1], or remove it from the table.")


def load_audio(
    path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = 7.5
) -> tuple[np.ndarray, int]:
    """Read one utterance as a mono float32 waveform at ``sample_rate``, trimmed or zero-padded.

    Channels are averaged; the signal is resampled if the file's rate differs; then it is cut to
    ``N = round(max_seconds * sample_rate)`` samples or zero-padded after its end to ``N``.
    ``max_seconds=None`` keeps the full length (``N = valid_len``).

    Returns:
        ``(waveform [N] float32, valid_len)`` where ``waveform[valid_len:]`` is zero padding.

    Raises:
        HcldError: naming the file, if it is missing, not decodable audio, empty, or holds
            non-finite samples or samples beyond ``MAX_ABS_SAMPLE`` (100) in absolute value.
    """
    path = Path(path)
    _check_exists(path)
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # LibsndfileError, RuntimeError, TypeError for non-audio files
        raise _read_error(path, err) from err
    if data.shape[0] == 0:
        raise HcldError(
            f"audio file {path} has no samples: remove it from the table or replace it."
        )
    _check_samples(path, data)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    wave = resample(np.ascontiguousarray(wave, dtype=np.float32), int(file_sr), int(sample_rate))
    target = _target_samples(max_seconds, sample_rate)
    if target is None:
        return np.ascontiguousarray(wave, dtype=np.float32), int(wave.shape[0])
    valid = min(int(wave.shape[0]), target)
    out = np.zeros(target, dtype=np.float32)
    out[:valid] = wave[:valid]
    return out, valid
