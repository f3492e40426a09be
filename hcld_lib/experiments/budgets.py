"""Does the answer depend on how long we train? Every comparison at several training budgets.

A run's ``history.csv`` holds the validation and test metrics of every epoch, and the first ``B``
epochs of a run are exactly the run a budget of ``B`` epochs would have trained
(:mod:`hcld_lib.training.stopping`). So one set of runs, each trained until its validation
plateau and for at least the largest budget (the profile's ``min_epochs``), answers every
comparison at every budget without training anything twice:

* :func:`budget_runs`: the runs table once per budget (``budget`` = ``"5 epochs"``, ...,
  ``"plateau stop"``), each run with the test metrics of the epoch it selects within the budget and
  whether the plateau rule had held by then (``converged``);
* :func:`by_budget`: any comparison table (the paper's claims, the readings of the open points)
  computed at each budget, with the share of the compared runs that had converged;
* :func:`stability` and :func:`stability_sentences`: per comparison, the verdict at each budget,
  and whether it is **robust**: the same at every budget at which all of its runs had converged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.io import HcldError, read_csv
from hcld_lib.training.stopping import at_budget

PLATEAU = "plateau stop"
"""The budget of runs that stop at their validation plateau (``stop_at_plateau``)."""

_FROM_HISTORY = {"emo_wa": "test_emotion_wa", "emo_ua": "test_emotion_ua",
                 "spk_wa": "speaker_test_speaker_wa", "spk_ua": "speaker_test_speaker_ua",
                 "val_emo_ua": "val_emotion_ua"}


def budget_label(budget: int) -> str:
    """``5`` -> ``"5 epochs"``."""
    return f"{int(budget)} epochs"


def final_budget(stop_at_plateau: bool, max_epochs: int) -> str:
    """The label of the runs' own end: :data:`PLATEAU`, or ``"<max_epochs> epochs"`` for runs
    that train a fixed number of epochs."""
    return PLATEAU if stop_at_plateau else budget_label(max_epochs)


def budget_order(labels: Sequence[str]) -> list[str]:
    """Budget labels from the shortest to :data:`PLATEAU`."""
    return sorted(dict.fromkeys(labels),
                  key=lambda b: np.inf if b == PLATEAU else float(b.split()[0]))


def _epochs(label: str) -> int | None:
    return None if label == PLATEAU else int(label.split()[0])


def _history(run_dir: str) -> pd.DataFrame:
    return read_csv(Path(run_dir) / "history.csv", what="a run's history",
                    remedy="train the run (or delete its folder and train it again)")


def budget_runs(runs: pd.DataFrame, budgets: Sequence[int], final: str = PLATEAU
                ) -> pd.DataFrame:
    """``runs`` (one row per finished run, with ``run_dir``, ``plateau_epoch``, ``converged``)
    once per budget of ``budgets`` and once as they ended (``final``, see
    :func:`final_budget`), with column ``budget``.

    At a budget of ``B`` epochs each run's metric columns (``emo_wa``, ``emo_ua``, ``spk_wa``,
    ``spk_ua``, ``val_emo_ua``, percent) and ``selected_epoch`` are those of the epoch it selects
    among its first ``B`` (:func:`hcld_lib.training.stopping.at_budget`), and ``converged`` says
    whether its plateau rule had held by epoch ``B``. The ``final`` rows are ``runs`` as they
    are; a budget equal to ``final`` is not repeated. Raises :class:`HcldError` when a run
    trained fewer than ``B`` epochs (its ``min_epochs`` was below the budget).
    """
    if "run_dir" not in runs:
        raise HcldError("budget_runs needs the runs' folders (the run_dir column of the grid)")
    parts = []
    histories = {d: _history(d).to_dict("records") for d in runs["run_dir"]}
    for budget in sorted(set(int(b) for b in budgets) - {_epochs(final)}):
        rows = []
        for run in runs.to_dict("records"):
            row = at_budget(histories[run["run_dir"]], budget)
            plateau = run.get("plateau_epoch")
            metrics = {m: 100.0 * float(row[c]) for m, c in _FROM_HISTORY.items()}
            if not run.get("trained", True):  # emotion results shared with another run only
                metrics.update(spk_wa=np.nan, spk_ua=np.nan)
            rows.append({**run, **metrics, "selected_epoch": int(row["epoch"]),
                         "converged": bool(pd.notna(plateau) and plateau <= budget)})
        parts.append(pd.DataFrame(rows).assign(budget=budget_label(budget)))
    parts.append(runs.assign(budget=final, converged=runs["converged"].astype(bool)))
    return pd.concat(parts, ignore_index=True)


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`by_budget` table at the runs' own end (its last budget); a table
    without a ``budget`` column as it is."""
    if "budget" not in table:
        return table
    return table[table["budget"] == budget_order(table["budget"])[-1]]


def converged_share(runs: pd.DataFrame, variants: Sequence[str],
                    where: dict[str, Any] | None = None) -> float:
    """The share of the runs of ``variants`` (and ``where``) that had converged."""
    sel = runs[runs["variant"].isin(list(variants))]
    for key, value in (where or {}).items():
        sel = sel[sel[key] == value]
    return float(sel["converged"].mean()) if len(sel) else float("nan")


def by_budget(budgeted: pd.DataFrame, table: Callable[[pd.DataFrame], pd.DataFrame],
              share: Callable[[pd.DataFrame, dict[str, Any]], float]) -> pd.DataFrame:
    """``table(runs of one budget)`` for every budget of :func:`budget_runs`' output, stacked,
    with columns ``budget`` and ``converged_share`` (``share(runs of the budget, row)``: the
    share of converged runs behind each row). Below the runs' own end the saved predictions (of
    the epoch each run finally selected) do not apply, so there the runs go to ``table`` without
    their folders (no bootstrap over utterances)."""
    out = []
    order = budget_order(budgeted["budget"])
    for label in order:
        runs = budgeted[budgeted["budget"] == label]
        if label != order[-1]:
            runs = runs.drop(columns=["run_dir"], errors="ignore")
        part = table(runs)
        shares = [share(runs, row) for row in part.to_dict("records")]
        out.append(part.assign(budget=label, converged_share=shares))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def stability(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per comparison (``keys``) of a :func:`by_budget` table: ``verdicts`` (budget ->
    verdict), ``shares`` (budget -> converged share), ``converged_budgets`` (the budgets at
    which every run had converged), ``robust`` (one verdict at all of those, and there is at
    least one), ``verdict`` (that verdict, else ``None``) and ``changes`` (the verdicts differ
    between budgets)."""
    rows = []
    for key, sub in table.groupby(list(keys), sort=False):
        sub = sub.set_index("budget").loc[budget_order(sub["budget"])]
        verdicts = dict(zip(sub.index, sub["verdict"]))
        shares = dict(zip(sub.index, sub["converged_share"].astype(float)))
        full = [b for b, s in shares.items() if s >= 1.0]
        settled = {verdicts[b] for b in full}
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "verdicts": verdicts, "shares": shares, "converged_budgets": full,
                     "robust": len(settled) == 1,
                     "verdict": settled.pop() if len(settled) == 1 else None,
                     "changes": len(set(verdicts.values())) > 1})
    return pd.DataFrame(rows)


def stability_sentences(stable: pd.DataFrame, label: Callable[[dict[str, Any]], str]
                        ) -> list[str]:
    """One sentence per row of :func:`stability`: the verdict at each budget with its share of
    converged runs, then whether it is robust and whether it changes with the budget."""
    lines = []
    for row in stable.to_dict("records"):
        parts = [f"{v} at {b} ({100 * row['shares'][b]:.0f} % of runs converged)"
                 for b, v in row["verdicts"].items()]
        if row["robust"]:
            end = (f"robust: {row['verdict']} at every budget at which all runs had converged "
                   f"({', '.join(row['converged_budgets'])})")
        elif row["converged_budgets"]:
            end = ("not robust: the verdict differs between budgets at which all runs had "
                   "converged")
        else:
            end = "no budget at which every run had converged: no robust verdict"
        change = ("; the verdict changes with the budget" if row["changes"] else
                  "; the same verdict at every budget")
        lines.append(f"{label(row)}: {'; '.join(parts)}. {end[0].upper()}{end[1:]}{change}.")
    return lines


def stability_headline(stable: pd.DataFrame) -> str:
    """One sentence on a :func:`stability` table: how many verdicts are robust, on how many
    converged budgets that rests, how many change with the budget."""
    robust = stable["robust"].astype(bool)
    single = int((robust & (stable["converged_budgets"].map(len) == 1)).sum())
    text = (f"Across training budgets: {int(robust.sum())} of {len(stable)} verdicts are robust "
            "(the same at every budget at which all their runs had converged)")
    if single:
        text += (f"; {single} of them rest on one such budget only, so for those robust means "
                 "the verdict of converged runs, not that a shorter budget agrees")
    return text + f"; {int(stable['changes'].sum())} change with the budget."


def stability_summary(stable: pd.DataFrame) -> str:
    """A paragraph on a :func:`stability` table: how many verdicts are robust, and each verdict
    that changes with the budget, budget by budget."""
    if stable.empty:
        return "No comparison to judge across budgets."
    keys = [c for c in stable.columns if c not in ("verdicts", "shares", "converged_budgets",
                                                   "robust", "verdict", "changes")]
    changing = stable[stable["changes"]]
    text = stability_headline(stable)
    for row in changing.to_dict("records"):
        name = ", ".join(str(row[k]) for k in keys)
        steps = "; ".join(f"{v} at {b} ({100 * row['shares'][b]:.0f} % converged)"
                          for b, v in row["verdicts"].items())
        text += f"\n- {name}: {steps}."
    return text
