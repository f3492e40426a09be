"""Figures: what a figure shows for what it is given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hcld_lib.plots.grid import plot_grid_comparison  # noqa: E402


def test_table_ii_draws_no_bar_for_a_variant_not_run_on_an_architecture():
    """The quick profile's baselines on the CNN only: the LSTM panel says "not run" for them
    instead of a zero-height bar."""
    rows = [{"variant": v, "arch": a, "n_runs": 5, "emo_ua_mean": 60.0 + i, "emo_ua_ci": 2.0,
             "paper_emo_ua": 70.0 if v != "mi" else np.nan}
            for a in ("cnn", "lstm") for i, v in enumerate(("emo_only", "hcld", "mi"))]
    table = pd.DataFrame(rows)
    table.loc[(table["arch"] == "lstm") & (table["variant"] == "mi"), "emo_ua_mean"] = np.nan
    fig = plot_grid_comparison(table)
    cnn, lstm = fig.axes[:2]

    def ours(ax):
        bars = next(c for c in ax.containers if c.get_label().startswith("ours"))
        return sorted(round(b.get_height(), 1) for b in bars.patches)

    assert ours(cnn) == [60.0, 61.0, 62.0]
    assert ours(lstm) == [60.0, 61.0]
    assert [t.get_text() for t in lstm.texts] == ["not run"]
    assert not cnn.texts
