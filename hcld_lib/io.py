"""Atomic file writing, the user-facing error type, and the names of things on disk.

Every cache, result and checkpoint in hcld is written through these helpers: the bytes go to a
temporary file in the destination folder, are flushed to disk, and replace the destination in one
``os.replace``. A crash leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class HcldError(ValueError):
    """A user-input error (a file, a folder, a value); the message says what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); the result should get the usual permissions
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars/arrays and paths are converted)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to ``path`` atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | os.PathLike, keys: tuple[str, ...] = (), what: str = "file",
               remedy: str = "delete it and run again") -> dict[str, Any]:
    """A dict saved with ``torch.save``, read with ``weights_only=True`` (tensors, numbers,
    strings, lists and dicts only: a pickle that would run code is refused), holding ``keys``.

    Raises:
        HcldError: naming the file and ``what`` it should be, and saying ``remedy``, when it is
            missing, unreadable (truncated, random bytes, a code-running pickle) or lacks a key.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise HcldError(f"{path} ({what}) does not exist; {remedy}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError, ...
        reason = " ".join(str(err).split())[:300]
        raise HcldError(f"{path} ({what}) cannot be read safely: {type(err).__name__}: "
                        f"{reason}; {remedy}") from err
    if not isinstance(obj, dict):
        raise HcldError(f"{path} ({what}) holds a {type(obj).__name__}, not a dict; {remedy}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise HcldError(f"{path} ({what}) lacks {missing}; {remedy}")
    return obj


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``final_dir`` only on success.

    If ``final_dir`` already exists it is replaced. On an exception the temporary folder is removed.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def slug(text: object) -> str:
    """A folder-name form of ``text``: letters, digits and ``-_.`` kept, anything else ``-``."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-") or "x"


def short_hash(obj: Any, length: int = 8) -> str:
    """The first ``length`` hex digits of the SHA-1 of ``obj`` as sorted JSON (a stable key)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:length]
