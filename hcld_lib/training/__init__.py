"""Training: one run's settings, the one fit loop, a run from cache to results, pretraining.

- :mod:`~hcld_lib.training.config`: :class:`~hcld_lib.training.config.RunConfig`;
- :mod:`~hcld_lib.training.fit`: the loop (warm-up, selection, checkpoints, mixed precision);
- :mod:`~hcld_lib.training.run`: ``train_run``, evaluation, the saved model;
- :mod:`~hcld_lib.training.pretrain`: cluster-based contrastive pretraining of the emotion path.
"""
