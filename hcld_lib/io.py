"""Atomic file writing, checked file reading, the user-facing error type, the names of things.

Every cache, result and checkpoint in hcld is written through these helpers: the bytes go to a
temporary file in the destination folder, are flushed to disk, and replace the destination in one
``os.replace``. A crash leaves either the old file or the new one, never half of either. A write
that fails (a full disk, a read-only file system, a file where a folder should be) raises an
:class:`HcldError` naming the file meant, not the hidden temporary one;
:func:`ensure_writable_dir` says the same of an output folder before any work starts.

Every file hcld reads back goes through one checked reader: :func:`read_json`,
:func:`read_csv`, :func:`load_npz`, :func:`load_npy` and :func:`load_torch`. A missing,
truncated or garbled file, or one without the keys or columns its reader needs, is an
:class:`HcldError` naming the file (``what`` says what it is) and saying what to do (``remedy``).
:func:`load_torch` always loads with ``weights_only=True`` and the array readers with
``allow_pickle=False``: a file holding Python objects that would run code when unpickled is
refused before anything of it runs.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
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


def _in_the_way(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists and is not a folder, if any."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _why_unwritable(path: Path, err: OSError) -> str:
    """What ``err`` (raised while writing in or at ``path``) means, and what to do."""
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full (no space left on the device): free some space or choose " \
               "another folder"
    if code == errno.EROFS:
        return "the file system is read-only: choose a folder on a writable disk"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: choose a folder you can write to, or change its permissions"
    if code == errno.EISDIR and path.is_dir():
        return "a folder has that name: remove it or choose another name"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _in_the_way(path)
        if blocker is not None:
            return f"{blocker} is a file, not a folder: move it away or choose another folder"
    return f"{err.strerror or err}: choose another folder"


def _write_error(path: Path, err: OSError) -> HcldError:
    return HcldError(f"cannot write {path}: {_why_unwritable(path, err)}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        HcldError: naming ``path`` when the write fails (disk full, read-only, no permission, a
            file in the way of its folder); nothing is left behind.
    """
    path = Path(path)
    tmp = None
    try:
        tmp = _tmp_path(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
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


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``final_dir`` only on success.

    If ``final_dir`` already exists it is replaced. On an exception the temporary folder is removed.
    """
    final_dir = Path(final_dir)
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp",
                                    dir=final_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as err:
        raise _write_error(final_dir, err) from err
    try:
        yield tmp
        try:
            if final_dir.exists():
                old = final_dir.with_name(f".{final_dir.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final_dir, old)
                os.replace(tmp, final_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final_dir)
        except OSError as err:
            raise _write_error(final_dir, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_value(text: str) -> object:
    """A command-line value (papermill's ``-p``, ``python -m hcld_lib.train``'s options): a
    Python literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def slug(text: object) -> str:
    """A folder-name form of ``text``: letters, digits and ``-_.`` kept, anything else ``-``."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-") or "x"


def short_hash(obj: Any, length: int = 8) -> str:
    """The first ``length`` hex digits of the SHA-1 of ``obj`` as sorted JSON (a stable key)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:length]


# -- an output folder, checked before any work -----------------------------------------------------

_PROBE_BYTES = 16384


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written in it; return it.

    A small probe file is written, flushed to disk and removed, so that a read-only file system,
    a folder without write permission or a full disk is reported now, by name, rather than as an
    ``OSError`` on a hidden temporary file after the work is done. (A disk with less room left
    than a result needs passes the probe; the atomic writers then report it by name.)

    Raises:
        HcldError: naming ``what`` and ``path``: a file (or device) in the way, no permission,
            read-only, disk full.
    """
    path = Path(path).expanduser()
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        kind = "file" if path.is_file() else "special file (a device, a socket or a pipe)"
        raise HcldError(f"{what} {path} is a {kind}, not a folder: choose another folder or "
                        "move it away")
    probe = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".hcld-probe-", suffix=".tmp", dir=path)
        probe = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise HcldError(f"cannot write in {what} {path}: {_why_unwritable(path, err)}") from err
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink()
    return path


# -- checked readers -------------------------------------------------------------------------------

REMEDY = "delete it and re-run the step that wrote it"
"""What the checked readers tell the user to do by default."""


def _bad(what: str, path: Path, problem: str, remedy: str) -> HcldError:
    return HcldError(f"{what} {path} {problem}: {remedy}")


def _unreadable(what: str, path: Path, err: OSError, remedy: str) -> HcldError:
    if isinstance(err, FileNotFoundError):
        return _bad(what, path, "does not exist", remedy)
    if isinstance(err, IsADirectoryError):
        return _bad(what, path, "is a folder, not a file", remedy)
    return _bad(what, path, f"cannot be read ({err.strerror or err})", remedy)


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an error (libraries' messages run on for lines)."""
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    sentence = text[0].split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {sentence[:160]}"


def _names(items: Iterable[Any]) -> str:
    return ", ".join(repr(str(x)) for x in items) or "none"


def _check_keys(obj: Any, keys: Sequence[str], what: str, path: Path, remedy: str) -> None:
    if not keys:
        return
    if not isinstance(obj, dict):
        raise _bad(what, path, f"holds a {type(obj).__name__}, not the mapping with the keys "
                   f"{_names(keys)} it should hold", remedy)
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _bad(what, path, f"lacks the key(s) {_names(missing)} (it has {_names(obj)})",
                   remedy)


def read_json(path: str | os.PathLike, *, what: str = "JSON file", remedy: str = REMEDY,
              keys: Sequence[str] = ()) -> Any:
    """The JSON value in ``path``; with ``keys``, a mapping that has every one of them.

    Raises:
        HcldError: naming the file, when it is missing, unreadable, not UTF-8, not valid JSON
            (e.g. truncated), or lacks a key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise _unreadable(what, path, err, remedy) from err
    except UnicodeDecodeError as err:
        raise _bad(what, path, "is not UTF-8 text (damaged?)", remedy) from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        state = "is empty" if not text.strip() else (
            f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; "
            "truncated or damaged?)")
        raise _bad(what, path, state, remedy) from err
    _check_keys(obj, keys, what, path, remedy)
    return obj


def read_csv(path: str | os.PathLike, *, what: str = "table", remedy: str = REMEDY,
             columns: Sequence[str] = (), **kwargs: Any) -> Any:
    """``pandas.read_csv(path, **kwargs)``, checked: a DataFrame with every one of ``columns``.

    Raises:
        HcldError: naming the file, when it is missing, unreadable, empty, not UTF-8, not
            parseable as CSV, or lacks a column (the message lists the ones it has).
    """
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path, **kwargs)
    except OSError as err:
        raise _unreadable(what, path, err, remedy) from err
    except pd.errors.EmptyDataError as err:
        raise _bad(what, path, "is empty", remedy) from err
    except UnicodeDecodeError as err:
        raise _bad(what, path, "is not UTF-8 text (damaged?)", remedy) from err
    except (pd.errors.ParserError, ValueError) as err:
        raise _bad(what, path, f"is not a readable CSV table ({_first_line(err)})",
                   remedy) from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise _bad(what, path, f"lacks the column(s) {_names(missing)} (it has "
                   f"{_names(frame.columns)})", remedy)
    return frame


def _pickle_refusal(what: str, path: Path, detail: str, remedy: str) -> HcldError:
    return _bad(what, path, f"holds Python objects ({detail}) that could run code when loaded; "
                "it was refused and nothing of it ran (hcld loads only tensors, arrays and plain "
                "values). If you did not write this file yourself, do not trust it", remedy)


def load_npz(path: str | os.PathLike, *, what: str = "array file", remedy: str = REMEDY,
             keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path`` (read into memory, ``allow_pickle=False``).

    Raises:
        HcldError: naming the file, when it is missing, unreadable, truncated or not an npz
            archive, holds pickled objects (refused), or lacks one of ``keys``.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _bad(what, path, "is an .npy array, not an .npz archive", remedy)
        with archive:
            arrays = {k: archive[k] for k in archive.files}
    except OSError as err:
        raise _unreadable(what, path, err, remedy) from err
    except HcldError:
        raise
    except ValueError as err:
        if "pickle" in str(err):
            raise _pickle_refusal(what, path, "an object array", remedy) from err
        raise _bad(what, path, f"is truncated or not an .npz archive ({_first_line(err)})",
                   remedy) from err
    except Exception as err:  # zipfile.BadZipFile, EOFError, ...: damaged bytes
        raise _bad(what, path, f"is truncated or not an .npz archive ({_first_line(err)})",
                   remedy) from err
    _check_keys(arrays, keys, what, path, remedy)
    return arrays


def load_npy(path: str | os.PathLike, *, what: str = "array file", remedy: str = REMEDY,
             mmap_mode: str | None = None) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (``allow_pickle=False``; ``mmap_mode`` as numpy's).

    Raises:
        HcldError: naming the file, when it is missing, unreadable, truncated, not an .npy
            array, or holds pickled objects (refused).
    """
    path = Path(path)
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except OSError as err:
        raise _unreadable(what, path, err, remedy) from err
    except ValueError as err:
        if "pickle" in str(err):
            raise _pickle_refusal(what, path, "an object array", remedy) from err
        raise _bad(what, path, f"is truncated or not an .npy array ({_first_line(err)})",
                   remedy) from err
    except Exception as err:  # EOFError, UnpicklingError, ...: damaged bytes
        raise _bad(what, path, f"is truncated or not an .npy array ({_first_line(err)})",
                   remedy) from err
    if not isinstance(array, np.ndarray):
        raise _bad(what, path, "is an .npz archive, not an .npy array", remedy)
    return array


_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_UNSUPPORTED = re.compile(r"Unsupported [^\n]*")


def numpy_safe_globals() -> list[Any]:
    """The numpy names :func:`load_torch` needs (``safe_globals``) to load numpy arrays, dtypes
    and scalars, e.g. a saved ``np.random.get_state()``; they build arrays and call nothing else.
    """
    from numpy._core import multiarray

    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
            *(getattr(np.dtypes, name) for name in np.dtypes.__all__)]


def load_torch(path: str | os.PathLike, *, what: str = "checkpoint", remedy: str = REMEDY,
               keys: Sequence[str] = (), safe_globals: Sequence[Any] = (),
               map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, checked; with ``keys``, a dict with all of them.

    ``weights_only=True`` unpickles only tensors, containers and plain values, plus the classes
    or functions in ``safe_globals`` (``torch.serialization.safe_globals``): a file whose pickle
    would import and call anything else (e.g. ``os.system``) is refused before it runs.

    Raises:
        HcldError: naming the file: missing or unreadable; truncated, random or not a torch
            file; holding objects that would run code (the callable is named); lacking a key.
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(safe_globals)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a foreign pickle
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        raise _unreadable(what, path, err, remedy) from err
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError, KeyError, ...
        text = str(err)
        blocked = _BLOCKED_GLOBAL.search(text)
        if blocked:
            raise _pickle_refusal(what, path, f"it would call {blocked.group(1)}",
                                  remedy) from err
        if "Weights only load failed" in text:  # a pickle the safe unpickler stopped reading
            detail = _UNSUPPORTED.search(text)
            raise _bad(what, path, "is damaged, or is a pickle with instructions a torch file "
                       f"never holds ({detail.group(0) if detail else 'unsupported'}); it was "
                       "refused and nothing of it ran", remedy) from err
        raise _bad(what, path, f"is truncated, damaged or not a torch file "
                   f"({_first_line(err)})", remedy) from err
    _check_keys(obj, keys, what, path, remedy)
    return obj
