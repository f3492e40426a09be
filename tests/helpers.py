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


def fbank_cache(root: Path, n_utterances: int, seed: int = 0) -> str:
    """The path of an fbank cache (2 s crops) of a synthetic corpus of ``n_utterances``."""
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.extract import extract_features

    table = synthesize_corpus(root / "corpus", n_utterances=n_utterances, seed=seed)
    return str(extract_features(table, "fbank", root / "cache", max_seconds=2.0,
                                progress=False).path)


class FakeHub:
    """Stands in for the Hugging Face Hub: ``hf_hub_download`` / ``snapshot_download`` copy files
    of a local model folder into the real cache layout (``models--owner--name/snapshots/<commit>``,
    ``refs/main``), so transformers resolves them as it would after a download; nothing touches
    the network. ``calls`` records (repo_id, filename or patterns, local_files_only)."""

    COMMIT = "0" * 40

    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id, self.folder, self.calls = repo_id, Path(folder), []

    def _snapshot(self, cache_dir: str | None) -> Path:
        from huggingface_hub import constants

        root = Path(cache_dir or constants.HF_HUB_CACHE) / (
            "models--" + self.repo_id.replace("/", "--"))
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(self.COMMIT)
        return root / "snapshots" / self.COMMIT

    def _copy(self, name: str, cache_dir: str | None) -> str:
        import shutil

        from huggingface_hub.errors import EntryNotFoundError

        snapshot = self._snapshot(cache_dir)
        if not (self.folder / name).is_file():
            missing = snapshot.parent.parent / ".no_exist" / self.COMMIT / name
            missing.parent.mkdir(parents=True, exist_ok=True)
            missing.touch()
            raise EntryNotFoundError(f"{name} is not in {self.repo_id}")
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.folder / name, snapshot / name)
        return str(snapshot / name)

    def hf_hub_download(self, repo_id, filename, *, cache_dir=None, local_files_only=False,
                        **_):
        from huggingface_hub.errors import LocalEntryNotFoundError

        self.calls.append((repo_id, filename, local_files_only))
        if repo_id != self.repo_id:
            raise AssertionError(f"asked the hub for {repo_id}")
        if local_files_only:
            raise LocalEntryNotFoundError(f"{filename} of {repo_id} is not in the cache")
        return self._copy(filename, cache_dir)

    def snapshot_download(self, repo_id, *, allow_patterns=(), cache_dir=None,
                          local_files_only=False, **_):
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        self.calls.append((repo_id, tuple(allow_patterns), local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        for name in allow_patterns:
            try:
                self._copy(name, cache_dir)
            except EntryNotFoundError:
                pass
        return str(self._snapshot(cache_dir))

    def install(self, monkeypatch) -> FakeHub:
        import transformers.utils.hub as hub

        monkeypatch.setattr(hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(hub, "snapshot_download", self.snapshot_download)
        return self


def tiny_whisper(folder: Path, seed: int = 0, perturb: bool = True) -> Path:
    """A tiny random Hugging Face Whisper (2 encoder layers, 32-d, 80 mels) saved with
    ``save_pretrained``, with a 9-token tokenizer and the feature extractor's config: enough for
    ``ctranslate2.converters.TransformersConverter`` to convert it, offline. ``perturb``: random
    layer norms and biases (else ones and zeros, which CTranslate2 stores once, aliased)."""
    import json

    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["!", "a", "b", "c", "<|endoftext|>", "<|startoftranscript|>", "<|en|>",
              "<|transcribe|>", "<|notimestamps|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = "<|endoftext|>"
    WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=special,
                     bos_token=special, eos_token=special, pad_token=special
                     ).save_pretrained(folder)
    config = WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
        vocab_size=len(tokens), max_source_positions=1500, max_target_positions=16,
        pad_token_id=4, bos_token_id=4, eos_token_id=4, decoder_start_token_id=5,
        begin_suppress_tokens=[], suppress_tokens=[],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # random layer norms and biases: no tensor equals another by chance
        for name, p in model.named_parameters() if perturb else ():
            if name.endswith(("layer_norm.weight", "layer_norm.bias", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def ct2_convert(hf_folder: Path, out: Path, quantization: str | None = None) -> Path:
    """``hf_folder`` converted to a CTranslate2 folder (``model.bin``) by ctranslate2's own
    converter, as faster-whisper's models are."""
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_folder)).convert(str(out), quantization=quantization, force=True)
    return out
