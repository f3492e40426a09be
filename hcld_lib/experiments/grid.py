"""The grid: variants x architectures x folds x seeds, each cell one :func:`train_run`.

Every cell writes its own run folder (``metrics.json`` last), and a finished run is never trained
again, so a grid stopped half-way resumes where it stopped and a crash loses only the runs in
flight. :func:`run_grid` returns one row per run (:func:`hcld_lib.experiments.tables.metrics_row`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib import runtime
from hcld_lib.experiments.engine import TaskFailed, run_tasks
from hcld_lib.experiments.tables import metrics_row
from hcld_lib.io import HcldError, read_json
from hcld_lib.method.variants import ARCHS, PAPER_VARIANTS, VARIANTS
from hcld_lib.training.config import RunConfig
from hcld_lib.training.run import prepare_shared, train_run


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
    return (config.run_dir / "metrics.json").is_file()


def run_grid(
    base: RunConfig,
    variants: Sequence[str] = PAPER_VARIANTS,
    archs: Sequence[str] = ARCHS,
    folds: int | Iterable[int] = 5,
    seeds: Sequence[int] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    engine: str = "ray",
    address: str | None = None,
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
        engine, address: see :func:`run_configs`.
    """
    return run_configs(grid_configs(base, variants, archs, folds, seeds, out_dir, overrides),
                       progress=progress, engine=engine, address=address)


#: Relative cost of a run by architecture: longer runs are submitted first, so that the last
#: minutes of a grid are not spent waiting for one slow run (then by fold, so that a worker's
#: consecutive runs share the fold's resident features).
_COST = {"lstm": 3, "transformer": 2, "cnn": 1}


def _train(config: RunConfig) -> dict[str, Any]:
    """One task of the engine: train (or resume) one run, return its metrics."""
    return train_run(config)


def run_configs(
    configs: Sequence[RunConfig],
    progress: bool = True,
    engine: str = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    desc: str = "grid",
    later: Collection[str] = (),
) -> pd.DataFrame:
    """Train every run of ``configs`` that has not finished; one row per run (the columns of
    ``tables.metrics_row`` and ``run_dir``), in order.

    The slowest architectures go first (:data:`_COST`), and the runs named in ``later`` last:
    runs another chapter also trains, which are then usually finished and only read.

    ``engine="ray"`` runs each as a Ray task (:mod:`hcld_lib.experiments.engine`: a local Ray
    with ``num_cpus`` workers, default all cores, or the cluster at ``address``; a dead worker's
    run is retried); ``engine="serial"`` trains them one after another in this process.
    ``progress``: in a notebook, one bar (runs done / total, the time left, the last run and its
    emotion UA); elsewhere a line per finished run (``[desc done/total] run  emo UA  time left``).
    """
    configs = list(configs)
    todo = sorted((i for i, c in enumerate(configs) if not is_finished(c)),
                  key=lambda i: (configs[i].resolved_run_name in later,
                                 -_COST.get(configs[i].emotion_arch, 1), configs[i].fold))
    if progress and len(todo) < len(configs):
        print(f"[{desc}] {len(configs) - len(todo)} of {len(configs)} runs are already finished",
              flush=True)
    prepare_shared([configs[i] for i in todo])
    report, bar = _progress(desc, len(todo), progress)
    try:
        run_tasks(_train, [configs[i] for i in todo], engine=engine, address=address,
                  num_cpus=num_cpus, num_gpus=num_gpus, on_result=report,
                  describe=lambda c: c.resolved_run_name)
    except TaskFailed as err:
        err.add_note(f"hcld {desc}: finished runs in {configs[0].out_dir} are kept and skipped "
                     "on the next call")
        raise
    finally:
        if bar is not None:
            bar.close()
    return finished_grid(configs)


def _progress(desc: str, total: int, enabled: bool) -> tuple[Any, Any]:
    """The callback :func:`run_tasks` calls as runs finish, and the notebook bar it updates
    (``None`` outside a notebook, where it prints a line per run)."""
    start = time.perf_counter()
    bar = (runtime.progress(total=total, desc=desc, unit="run")
           if enabled and total and runtime.in_notebook() else None)

    def report(_: int, config: RunConfig, metrics: dict[str, Any], done: int, n: int) -> None:
        ua = 100 * metrics["test"]["emotion"]["ua"]
        if bar is not None:
            bar.set_postfix_str(f"{config.resolved_run_name}: emo UA {ua:.1f}", refresh=False)
            bar.update(1)
        elif enabled:
            left = (time.perf_counter() - start) / done * (n - done)
            print(f"[{desc} {done:>3}/{n}] {config.resolved_run_name:<48} emo UA {ua:5.1f}  "
                  f"(~{left:.0f} s left)", flush=True)

    return report, bar


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
        run_dir = c.run_dir
        row = metrics_row(read_json(run_dir / "metrics.json", what="a finished run's metrics",
                                    remedy="delete the run folder and run the grid again"),
                          run_name=c.resolved_run_name)
        rows.append({**row, "run_dir": str(run_dir)})
    return pd.DataFrame(rows)
