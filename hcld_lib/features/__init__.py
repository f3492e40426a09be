"""Frozen encoders and their caches ("upstream"): what training reads instead of audio.

- :mod:`~hcld_lib.features.backbone`: what every frozen encoder implements;
- :mod:`~hcld_lib.features.fbank`, :mod:`~hcld_lib.features.ssl`: log-mel filterbanks (the
  embedded default), torchaudio's HuBERT-base (the paper's) and Hugging Face speech encoders;
- :mod:`~hcld_lib.features.cache`, :mod:`~hcld_lib.features.extract`: the feature cache and its
  resumable extraction;
- :mod:`~hcld_lib.features.normalizer`, :mod:`~hcld_lib.features.resident`: a fold's
  standardisation and its features resident on the training device;
- :mod:`~hcld_lib.features.speaker_encoders`: pretrained speaker encoders (GE2E, ECAPA) and their
  cache, for the analysis of emotion inside speaker embeddings.
"""
