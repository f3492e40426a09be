"""Test-wide settings: nothing downloads, and nothing is cached in the user's home.

Every test runs offline (``HCLD_OFFLINE=1``) unless it removes the flag itself to test the
online path against a local file URL; hcld's own caches (file hashes) go to a temporary folder,
and numba's compiled code to one shared temporary folder (so UMAP compiles once per machine).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def offline_and_private_caches(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    monkeypatch.setenv("HCLD_OFFLINE", "1")
    monkeypatch.setenv("HCLD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hcld-cache"))
    if not os.environ.get("NUMBA_CACHE_DIR"):
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "hcld-numba"))
