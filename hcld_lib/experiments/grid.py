"""The grid: variants x architectures x folds x seeds, each cell one :func:`train_run`.

Every cell writes its own run folder (``metrics.json`` last), and a finished run is never trained
again, so a grid stopped half-way resumes where it stopped and a crash loses only the runs in
flight. :func:`run_grid` returns one row per run (:func:`hcld_lib.experiments.tables.metrics_row`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.experiments.tables import metrics_row
from hcld_lib.io import HcldError
from hcld_lib.method.variants import ARCHS, PAPER_VARIANTS, VARIANTS
from hcld_lib.training.config import RunConfig
from hcld_lib.training.run import train_run


def fold_list(folds: int | Iterable[int], n_folds: int) -> list[int]:
    """``folds`` as a list of fold indices (an int ``k`` = the first ``k``), checked."""
    out = list(range(folds)) if isinstance(folds, int | np.integer) else [int(f) for f in folds]
    bad = [f for f in out if not 0 <= f < n_folds]
    if bad:
        raise HcldError(
            f"folds {bad} are outside 0..{n_folds - 1} (the config has n_folds={n_folds}); "
            "ask for fewer folds or raise n_folds"
        )
    return out


def grid_configs(
    base: RunConfig,
    variants: Sequence[str] = PAPER_VARIANTS,
    archs: Sequence[str] = ARCHS,
    folds: int | Iterable[int] = 5,
    seeds: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[RunConfig]:
    """The config of every cell, in grid order (variant, arch, fold, seed).

    Each cell is ``base`` with the variant's own settings (``RunConfig.replace(variant=...)``),
    ``arch`` for both branches, the fold, the seed and ``out_dir``, then ``overrides`` (which may
    set a reading of an open point for every variant).
    """
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise HcldError(f"unknown variant(s) {bad}; choose from {sorted(VARIANTS)}")
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise HcldError(f"unknown architecture(s) {bad}; choose from {ARCHS}")
    out_dir = str(out_dir if out_dir is not None else base.out_dir)
    seeds = [base.seed] if seeds is None else [int(s) for s in seeds]
    return [
        base.replace(variant=v, emotion_arch=a, speaker_arch=None, fold=f, seed=s,
                     out_dir=out_dir, run_name=None, **(overrides or {}))
        for v in variants for a in archs for f in fold_list(folds, base.n_folds) for s in seeds
    ]


def is_finished(config: RunConfig) -> bool:
    return (Path(config.out_dir) / config.resolved_run_name / "metrics.json").is_file()


def run_grid(
    base: RunConfig,
    variants: Sequence[str] = PAPER_VARIANTS,
    archs: Sequence[str] = ARCHS,
    folds: int | Iterable[int] = 5,
    seeds: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Train every cell of the grid and return one row per run, in grid order.

    Args:
        base: shared settings (features cache, epochs, widths, protocol, n_folds, seed, ...).
            Loss switches come from each variant (:data:`hcld_lib.method.variants.VARIANTS`).
        variants: variant names, e.g. :data:`hcld_lib.method.variants.PAPER_VARIANTS`.
        archs: architectures, each used for both branches (as in Table II).
        folds: how many folds to run (the first ``folds``) or an explicit list of fold indices.
        seeds: training seeds (``None``: ``base.seed``).
        out_dir: runs folder (default ``base.out_dir``).
        progress: print one line per finished run: runs done / total and the time left.
        overrides: RunConfig fields applied to every run last.
    """
    return run_configs(grid_configs(base, variants, archs, folds, seeds, out_dir, overrides),
                       progress=progress)


def run_configs(configs: Sequence[RunConfig], progress: bool = True) -> pd.DataFrame:
    """Train every run of ``configs`` that has not finished; one row per run, in order."""
    todo = sum(not is_finished(c) for c in configs)
    rows = []
    start = time.perf_counter()
    trained = 0
    for i, config in enumerate(configs, 1):
        done = is_finished(config)
        try:
            metrics = train_run(config)
        except Exception as err:
            err.add_note(f"hcld grid: run {config.resolved_run_name} ({i}/{len(configs)}) failed; "
                         f"finished runs in {config.out_dir} are kept and skipped on the next call")
            raise
        rows.append(metrics_row(metrics, run_name=config.resolved_run_name))
        trained += not done
        if progress and not done:
            rate = (time.perf_counter() - start) / trained
            print(f"[grid {trained:>3}/{todo}] {config.resolved_run_name:<48} "
                  f"emo UA {rows[-1]['emo_ua']:5.1f}  (~{(todo - trained) * rate:.0f} s left)",
                  flush=True)
    if progress and todo < len(configs):
        print(f"[grid] {len(configs) - todo} of {len(configs)} runs were already finished")
    return pd.DataFrame(rows)


def finished_grid(configs: Sequence[RunConfig], what: str = "the grid (notebook 04)"
                  ) -> pd.DataFrame:
    """One row per run of ``configs``, read from their folders; nothing is trained.

    Raises :class:`HcldError` listing the runs that have not finished, and saying to run
    ``what`` first.
    """
    missing = [c.resolved_run_name for c in configs if not is_finished(c)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                           else "")
        raise HcldError(f"{len(missing)} of {len(configs)} runs have not finished in "
                        f"{configs[0].out_dir} ({shown}); run {what} first")
    rows = []
    for c in configs:
        run_dir = Path(c.out_dir) / c.resolved_run_name
        row = metrics_row(json.loads((run_dir / "metrics.json").read_text()),
                          run_name=c.resolved_run_name)
        rows.append({**row, "run_dir": str(run_dir)})
    return pd.DataFrame(rows)
