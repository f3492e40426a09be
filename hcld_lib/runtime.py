"""Where code runs: the device, the seed, the offline rule, caches of compiled code, progress.

One rule for each, used by every module:

* **device**: ``"auto"`` (or ``None``) is CUDA when a GPU is visible, else the CPU
  (:func:`resolve_device`);
* **seed**: :func:`set_seed` seeds Python, NumPy and torch and asks torch for deterministic
  kernels, so a run on the CPU repeats to the bit;
* **offline**: :func:`offline` is true when the caller says so, or when ``HCLD_OFFLINE``,
  ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (``1``, ``true``,
  ``yes``, ``on``); offline, nothing is downloaded and a missing model is an error that says
  where to put the file;
* **caches**: hcld's own (remembered file hashes) under :func:`cache_home`
  (``$HCLD_CACHE_DIR``, default ``$XDG_CACHE_HOME/hcld``), numba's compiled code (umap-learn
  and librosa compile with numba, ~25 s cold) in its ``numba`` folder unless
  ``NUMBA_CACHE_DIR`` is set (:func:`numba_cache`);
* **progress**: :func:`progress` is a notebook widget inside Jupyter, a terminal bar on a
  terminal, and otherwise (a log, papermill's captured stderr) nothing at all, so executed copies
  are not flooded with progress lines.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

_TRUE = ("1", "true", "yes", "on")
OFFLINE_VARIABLES: tuple[str, ...] = ("HCLD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline(explicit: bool | None = None) -> bool:
    """Whether downloads are forbidden: ``explicit`` when given, else the environment flags."""
    if explicit is not None:
        return bool(explicit)
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in OFFLINE_VARIABLES)


def resolve_device(device: Any = "auto") -> Any:
    """``"auto"``/``None`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (CPU runs repeat)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms(True, warn_only=True) without its first step, which
    # imports the compiler (two seconds in every new process) to set a flag of compiled code
    torch.set_deterministic_debug_mode("warn")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (``None``: one per core) inside the block, and put
    back after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(os.cpu_count() or 1) if n is None else int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_home() -> Path:
    """hcld's per-user cache folder: ``$HCLD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hcld``."""
    if os.environ.get("HCLD_CACHE_DIR"):
        return Path(os.environ["HCLD_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "hcld"


def numba_cache() -> Path:
    """The folder numba caches compiled functions in (created; ``NUMBA_CACHE_DIR`` is set to it).

    Call before importing umap or librosa: numba reads the variable at import time.
    """
    if not os.environ.get("NUMBA_CACHE_DIR"):
        os.environ["NUMBA_CACHE_DIR"] = str(cache_home() / "numba")
    path = Path(os.environ["NUMBA_CACHE_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab or papermill), where widgets render."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar that suits where it runs: a widget in Jupyter, text on a terminal, else none.

    ``kwargs`` go to tqdm (``total``, ``desc``, ``unit``, ``initial``, ...).
    """
    if enabled and in_notebook():
        from tqdm.notebook import tqdm
    else:
        from tqdm import tqdm

        enabled = enabled and sys.stderr.isatty()
    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)
