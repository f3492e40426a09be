"""``python -m hcld_lib.features verify FOLDER...``: check feature caches from the shell.

Each FOLDER is a cache folder (``<backbone>-<key>/``, with ``meta.json``) or a folder of caches
(``runs/cache``): every cache in it is checked. A cache is checked as training opens it (complete,
``table.csv`` and ``index.csv`` matching their SHA-256, ``features.npy`` of the recorded shape and
size) and then every row against its CRC-32. Prints ``OK`` or the error for each cache; the exit
status is 1 when any check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hcld_lib.features.cache import open_cache
from hcld_lib.io import HcldError


def cache_folders(folder: Path) -> list[Path]:
    """``folder`` if it looks like a cache (or is not a folder), else the caches inside it."""
    if not folder.is_dir() or any((folder / n).exists() for n in
                                  ("meta.json", "features.npy", "progress.npz")):
        return [folder]
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and any((p / n).exists() for n in ("meta.json", "features.npy")))
    return inner or [folder]


def verify_folder(folder: Path) -> str:
    """Check one cache completely; return its OK line (raises :class:`HcldError` otherwise)."""
    start = time.perf_counter()
    cache = open_cache(folder, verify=True)
    size = cache.array.nbytes / 2**20
    return (f"OK {folder}: {len(cache)} rows, {size:.0f} MB, every checksum matches "
            f"({time.perf_counter() - start:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hcld_lib.features",
        description="Check feature caches: structure, SHA-256 of their index, CRC-32 of every row.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check cache folders (or folders of caches)")
    verify.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    args = parser.parse_args(argv)
    failed = 0
    for given in args.folders:
        for folder in cache_folders(given):
            try:
                print(verify_folder(folder), flush=True)
            except HcldError as err:
                failed += 1
                print(f"FAILED {folder}: {err}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
