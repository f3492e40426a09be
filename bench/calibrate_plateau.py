"""Calibrate the plateau rule: does validation noise stop runs early?

Trains a grid of the quick profile for a long fixed budget (no early stop: 100 epochs by
default), then replays candidate plateau rules on each run's history (a run's first epochs are
exactly the shorter run, so nothing is trained twice) and prints, per rule:

- the epochs a run would train (mean, max);
- the test emotion UA of the epoch it would select, against selecting over the whole budget:
  mean difference over runs with its 95 % t-interval (a rule that stops on noise loses here);
- per variant, the mean test UA at the rule's stop and over the whole budget;
- the paper's headline comparison (HCLD vs EMO-only, CNN) under each rule and at fixed budgets.

Run: ``.venv/bin/python bench/calibrate_plateau.py [--epochs 100] [--workers 2]`` (about 15 minutes
on 2 cores; runs are kept under ``runs/calibrate/`` and reused). The README's "How long a run
trains" section quotes its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from hcld_lib.analysis.stats import compare
from hcld_lib.experiments.engine import ray_session
from hcld_lib.experiments.grid import run_configs
from hcld_lib.experiments.params import setup
from hcld_lib.training.stopping import plateau_epoch, selected_epoch

REPO = Path(__file__).resolve().parent.parent
RULES = [(p, w, m) for p in (3, 4, 5, 8) for w in (1, 3, 5) for m in (10, 20)]


def stop_epoch(val: np.ndarray, patience: int, window: int, min_epochs: int) -> int:
    """Where a run with this rule stops: the first epoch >= min_epochs at which it holds."""
    for t in range(min_epochs, len(val) + 1):
        if plateau_epoch(val[:t], patience, window) is not None:
            return t
    return len(val)


def test_at(history: pd.DataFrame, stop: int) -> float:
    val = history["val_emotion_ua"].to_numpy()[:stop]
    return 100 * float(history["test_emotion_ua"].iloc[selected_epoch(val) - 1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="the validation share of each fold's training part (profile's)")
    args = parser.parse_args()
    exp = setup(work_dir=str(REPO / "runs" / "calibrate" / "work"), figures_dir=None,
                results_dir=str(REPO / "runs" / "calibrate" / "results"))
    out = REPO / "runs" / "calibrate" / "runs"
    fixed = dict(max_epochs=args.epochs, stop_at_plateau=False)
    if args.val_fraction is not None:
        fixed["val_fraction"] = args.val_fraction
        out = out.with_name(f"runs-val{args.val_fraction:g}")
    configs = exp.grid_configs(["emo_only", "orth", "hcld_wo_supcon", "hcld_wo_lcl", "hcld"],
                               ["cnn"], range(5), [0, 1], **fixed)
    configs += exp.grid_configs(["emo_only", "orth", "hcld"], ["lstm", "transformer"], range(3),
                                [0], **fixed)
    configs = [c.replace(out_dir=str(out)) for c in configs]
    with ray_session(num_cpus=args.workers):
        runs = run_configs(configs, desc="calibration")
    histories = {r.run_name: pd.read_csv(Path(r.run_dir) / "history.csv")
                 for r in runs.itertuples()}
    print(f"\n{len(runs)} runs of {args.epochs} epochs ({exp.caption})")
    print(f"{'rule (patience, window, min)':<30s} {'epochs':>12s} "
          f"{'test UA at stop - at end':>34s}")
    for rule in RULES:
        stops = [stop_epoch(h["val_emotion_ua"].to_numpy(), *rule) for h in histories.values()]
        diff = np.array([test_at(h, s) - test_at(h, len(h))
                         for h, s in zip(histories.values(), stops)])
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        print(f"{str(rule):<30s} {np.mean(stops):6.1f} (max {max(stops):3d}) "
              f"{diff.mean():+7.2f} [{diff.mean() - half:+.2f}, {diff.mean() + half:+.2f}]")
    curves = {}
    for name, h in histories.items():
        variant, arch = name.split("__")[:2]
        if arch == "cnn":
            curves.setdefault(variant, []).append(h)
    print("\nmean over CNN runs: validation / test emotion UA at epoch")
    epochs = [e for e in (5, 10, 15, 20, 25, 30, 40, 60, 80, 100) if e <= args.epochs]
    print(f"{'':16s}" + "".join(f"{e:>11d}" for e in epochs))
    for variant, hs in curves.items():
        val = np.mean([h["val_emotion_ua"].to_numpy() for h in hs], axis=0) * 100
        test = np.mean([h["test_emotion_ua"].to_numpy() for h in hs], axis=0) * 100
        print(f"{variant:<16s}" + "".join(f"{val[e - 1]:5.1f}/{test[e - 1]:5.1f}"
                                          for e in epochs))
    print("\nHCLD vs EMO-only, emotion UA (cnn), by how long the runs train")
    budgets = {f"{e} epochs": (lambda h, e=e: e) for e in (5, 20, 40) if e < args.epochs}
    budgets[f"{args.epochs} epochs"] = len
    rule = (exp.base_config().patience, exp.base_config().plateau_window,
            exp.base_config().min_epochs)
    budgets[f"the profile's rule {rule}"] = (
        lambda h: stop_epoch(h["val_emotion_ua"].to_numpy(), *rule))
    for label, when in budgets.items():
        rows = [{"variant": n.split("__")[0], "arch": n.split("__")[1],
                 "fold": int(n.split("fold")[1].split("__")[0]),
                 "seed": int(n.split("seed")[1][:1]), "emo_ua": test_at(h, when(h))}
                for n, h in histories.items()]
        r = compare(pd.DataFrame(rows), "hcld", "emo_only", "emo_ua", 1.0,
                    where={"arch": "cnn"})
        print(f"   {label:<28s} {r['mean']:+5.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] "
              f"over {r['n_pairs']} pairs: {r['verdict']} (expected: HCLD above)")


if __name__ == "__main__":
    main()
