"""The forest plot of the verdicts: every comparison (the paper's claims, the readings of the open
points) with its interval, at every training budget."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.experiments.budgets import budget_order
from hcld_lib.io import HcldError
from hcld_lib.plots.style import VERDICT_COLORS, finish_figure


def plot_budgets(table: pd.DataFrame, rows: Sequence[str], panels: str | None = None,
                 caption: str | None = None,
                 title: str = "Does the answer depend on how long we train?",
                 series: str = "budget") -> Figure:
    """A forest plot of every comparison at every training budget (or backbone, ...).

    One line per comparison (the columns ``rows`` joined, e.g. comparison and architecture),
    one panel per value of ``panels`` (e.g. the comparison, when rows are readings); per value
    of ``series`` (the budgets from the shortest, top, to the runs' own end; or the backbones),
    the mean difference with its 95 % interval, coloured by verdict, its marker by series, and
    the share of converged runs written beside it. The paper's difference is a cross.

    ``table``: a ``by_budget`` table (:func:`hcld_lib.experiments.comparisons.claims_by_budget`,
    :func:`hcld_lib.experiments.readings.readings_by_budget`) or any table with a ``series``
    column (:func:`hcld_lib.experiments.comparisons.claims_by_backbone`).
    """
    need = {*rows, series, "mean", "ci_low", "ci_high", "verdict", "converged_share"}
    if panels is not None:
        need.add(panels)
    if not need <= set(table.columns):
        raise HcldError(f"plot_budgets: table lacks {sorted(need - set(table.columns))}")
    budgets = (budget_order(table[series]) if series == "budget"
               else list(dict.fromkeys(table[series])))
    labels = table[list(rows)].astype(str).agg(" | ".join, axis=1)
    table = table.assign(_row=labels)
    names = list(dict.fromkeys(labels))
    groups = list(dict.fromkeys(table[panels])) if panels else [None]
    offsets = np.linspace(0.25, -0.25, len(budgets)) if len(budgets) > 1 else np.zeros(1)
    markers = dict(zip(budgets, "os^DvP"))
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups) + 1.6,
                                                      0.55 * len(names) + 2.0),
                             squeeze=False, sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, group in zip(axes[0], groups):
        sub = table if group is None else table[table[panels] == group]
        for budget, dy in zip(budgets, offsets):
            part = sub[sub[series] == budget].set_index("_row").reindex(names)
            for yi, (_, r) in zip(y + dy, part.iterrows()):
                if pd.isna(r["mean"]):
                    continue
                color = VERDICT_COLORS.get(r["verdict"], "#7f7f7f")
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=color, lw=1.6)
                ax.plot(r["mean"], yi, markers[budget], color=color, ms=5)
                ax.annotate(f"{100 * r['converged_share']:.0f}%", (r["ci_high"], yi),
                            xytext=(3, -2), textcoords="offset points", fontsize=6,
                            color="0.35")
                if "paper" in r and not pd.isna(r["paper"]) and budget == budgets[-1]:
                    ax.plot(r["paper"], yi, "x", color="black", ms=5)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, names, fontsize=8)
        ax.set_title(f"{group + ': ' if group else ''}difference (points)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=c, lw=2, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [plt.Line2D([], [], marker=markers[b], ls="", color="0.3", label=b)
                for b in budgets]
    handles.append(plt.Line2D([], [], marker="x", ls="", color="black", label="paper"))
    # beside the last panel, where it hides no row
    axes[0, -1].legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       title=f"verdict / {series}\n(% = runs converged)", title_fontsize=7)
    return finish_figure(fig, title, caption)
