"""Builders shared by several test modules (not tests themselves)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_hubert(folder: Path, norm: str = "group", seed: int = 0,
                do_normalize: bool = True) -> Path:
    """A tiny random Hugging Face HuBERT (2 layers, 32-d) saved with ``save_pretrained``: the
    path a user's checkpoint takes, offline. ``norm``: the front end's ``feat_extract_norm``."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm, do_stable_layer_norm=norm == "layer",
    )
    HubertModel(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        do_normalize=do_normalize, return_attention_mask=norm == "layer"
    ).save_pretrained(folder)
    return folder


def all_layer_cache(root: Path, n_utterances: int = 48):
    """A ``layer="all"`` feature cache ([N, 3, T, 32]) of a tiny synthetic corpus through
    :func:`tiny_hubert`."""
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.extract import extract_features

    folder = tiny_hubert(root / "tiny-hubert")
    table = synthesize_corpus(root / "corpus", n_utterances=n_utterances, seed=1)
    return extract_features(table, f"hf:{folder}", root / "cache", max_seconds=1.0,
                            layer="all", progress=False)
