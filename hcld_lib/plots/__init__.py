"""Every figure of the companion, one module per chapter of the data flow.

- :mod:`~hcld_lib.plots.style`: colours, title and provenance caption, saving;
- :mod:`~hcld_lib.plots.corpus`: the corpus, spectrograms, cached features;
- :mod:`~hcld_lib.plots.training`: one run's curves and confusion matrix;
- :mod:`~hcld_lib.plots.method`: the method on one batch (pair masks, gradient reach);
- :mod:`~hcld_lib.plots.grid`: ours beside the paper's Table II;
- :mod:`~hcld_lib.plots.budgets`: every verdict (the paper's claims, the readings of the open
  points) with its interval at several training budgets;
- :mod:`~hcld_lib.plots.spaces`: UMAP views and the decoupling scorecard;
- :mod:`~hcld_lib.plots.speaker`: emotion inside speaker spaces, cluster pretraining.

Each function returns a :class:`matplotlib.figure.Figure`; ``Experiment.save_figure`` writes it.
"""

from hcld_lib.plots.budgets import plot_budgets
from hcld_lib.plots.corpus import (
    pick_utterances_per_emotion,
    plot_corpus_overview,
    plot_feature_examples,
    plot_spectrograms_per_emotion,
)
from hcld_lib.plots.grid import plot_grid_comparison
from hcld_lib.plots.method import plot_gradient_reach, plot_pair_masks
from hcld_lib.plots.spaces import plot_scorecard, plot_umap_grid
from hcld_lib.plots.speaker import (
    plot_contingency,
    plot_label_budget,
    plot_nmi_bars,
    plot_pretrain_loss,
    source_label,
)
from hcld_lib.plots.style import save_figure
from hcld_lib.plots.training import plot_confusion, plot_training_curves

__all__ = [
    "pick_utterances_per_emotion",
    "plot_budgets",
    "plot_confusion",
    "plot_contingency",
    "plot_corpus_overview",
    "plot_feature_examples",
    "plot_gradient_reach",
    "plot_grid_comparison",
    "plot_label_budget",
    "plot_nmi_bars",
    "plot_pair_masks",
    "plot_pretrain_loss",
    "plot_scorecard",
    "plot_spectrograms_per_emotion",
    "plot_training_curves",
    "plot_umap_grid",
    "save_figure",
    "source_label",
]
