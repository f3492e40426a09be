"""Figures of the grid: ours beside the paper's Table II."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hcld_lib.io import HcldError
from hcld_lib.method.variants import variant_label
from hcld_lib.plots.style import finish_figure


def plot_grid_comparison(
    side_by_side: pd.DataFrame, caption: str | None = None, metric: str = "emo_ua"
) -> Figure:
    """Our mean with its 95 % interval beside the paper's number, per variant and architecture.

    Args:
        side_by_side: long table of :func:`hcld_lib.experiments.tables.comparison` (columns
            ``variant``, ``arch``, ``n_runs``, ``<metric>_mean``, ``<metric>_ci`` (half-width of
            the 95 % t-interval over folds x seeds), ``paper_<metric>``).
        metric: ``emo_wa``, ``emo_ua``, ``spk_wa`` or ``spk_ua``.
    """
    need = {"variant", "arch", f"{metric}_mean"}
    if not need <= set(side_by_side.columns):
        raise HcldError(f"side_by_side lacks {sorted(need - set(side_by_side.columns))}")
    archs = list(dict.fromkeys(side_by_side["arch"]))
    variants = list(dict.fromkeys(side_by_side["variant"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.2), squeeze=False,
                             sharey=True)
    x = np.arange(len(variants))
    for ax, arch in zip(axes[0], archs):
        sub = side_by_side[side_by_side["arch"] == arch].set_index("variant").reindex(variants)
        ours = sub[f"{metric}_mean"].to_numpy(dtype=float)
        err = sub.get(f"{metric}_ci", pd.Series(np.nan, index=sub.index)).to_numpy(dtype=float)
        n = int(np.nanmax(sub.get("n_runs", pd.Series([1])).to_numpy(dtype=float)))
        ran = np.isfinite(ours)  # a variant not trained on this architecture: no bar
        ax.bar(x[ran] - 0.2, ours[ran], 0.4, yerr=np.nan_to_num(err[ran]), capsize=3,
               color="#1f77b4", label=f"ours (mean, 95 % interval over {n} runs)")
        for i in np.flatnonzero(~ran):
            ax.text(x[i], 2, "not run", rotation=90, ha="center", va="bottom", fontsize=7,
                    color="#666666")
        paper_col = f"paper_{metric}"
        if paper_col in sub:
            ax.bar(x + 0.2, np.nan_to_num(sub[paper_col].to_numpy(dtype=float)), 0.4,
                   color="#bbbbbb", label="paper (IEMOCAP, HuBERT)")
        ax.set_xticks(x, [variant_label(v) for v in variants], rotation=30, fontsize=8)
        ax.set(title=arch, xlabel="variant")
        task, _, name = metric.partition("_")
        ax.set_ylabel(f"{'emotion' if task == 'emo' else 'speaker'} {name.upper()} (%)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    return finish_figure(fig, "Ours beside the paper's Table II", caption)


