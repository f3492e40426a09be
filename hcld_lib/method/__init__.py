"""The method: the two-branch model, the loss terms, the label anchors, the batch sampler, and
the named variants that switch them.

- :mod:`~hcld_lib.method.models`: temporal encoders, the layer mix, X_e and X_s;
- :mod:`~hcld_lib.method.losses`: L_task, ICLD, SupCon, the label-anchored loss, the orth
  baseline, the cluster loss, and the objective that adds them;
- :mod:`~hcld_lib.method.anchors`: the label words' text embeddings, projected;
- :mod:`~hcld_lib.method.sampler`: batches in which every sample has its positives;
- :mod:`~hcld_lib.method.variants`: EMO-only, orth, HCLD and its ablations and readings.
"""
