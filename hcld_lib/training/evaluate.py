"""A run's evaluation: the model's predictions on a part of the fold, and their metrics.

Every epoch a run predicts its validation, test and speaker-test parts (:data:`SPLITS`) without
gradients, in batches of :data:`EVAL_BATCH` utterances grouped by length, and scores them
(:func:`split_metrics`): emotion WA / UA / F1 and cross-entropy, speaker WA / UA.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from hcld_lib.analysis.metrics import classification_metrics
from hcld_lib.features.resident import FoldFeatures
from hcld_lib.training.fold import FoldData

SPLITS: tuple[str, ...] = ("val", "test", "speaker_test")

EVAL_BATCH = 256
"""Utterances per evaluation batch (no gradients: large batches, grouped by length)."""


@torch.no_grad()
def predict(model: nn.Module, features: FoldFeatures, positions: np.ndarray, batch_size: int
            ) -> dict[str, np.ndarray | None]:
    """Embeddings and predicted classes of ``positions`` of ``features`` (eval mode, in order).

    Batches take the positions in order of length, so that little padding is computed."""
    was_training = model.training
    model.eval()
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(features.lengths.cpu().numpy()[positions], kind="stable")
    parts: dict[str, list[torch.Tensor]] = {"x_e": [], "x_s": [], "emotion_pred": [],
                                            "speaker_pred": [], "emotion_logp": []}
    for start in range(0, len(order), batch_size):
        out = model(*features.gather(positions[order[start:start + batch_size]]))
        parts["x_e"].append(out["x_e"].float())
        parts["emotion_pred"].append(out["emotion_logits"].argmax(-1))
        parts["emotion_logp"].append(torch.log_softmax(out["emotion_logits"].float(), -1))
        if out["x_s"] is not None:
            parts["x_s"].append(out["x_s"].float())
            parts["speaker_pred"].append(out["speaker_logits"].argmax(-1))
    model.train(was_training)
    back = np.argsort(order, kind="stable")
    return {k: (torch.cat(v).cpu().numpy()[back] if v else None) for k, v in parts.items()}


def split_metrics(pred: dict[str, np.ndarray | None], emotion: np.ndarray, speaker: np.ndarray,
                  data: FoldData, with_speaker: bool) -> dict[str, Any]:
    """``{"emotion": metrics, "speaker": metrics or None, "n": N}`` of one part.

    Speaker metrics cover the items whose speaker was seen in training (label >= 0)."""
    result: dict[str, Any] = {"n": int(len(emotion)), "emotion": None, "speaker": None}
    if len(emotion) == 0:
        return result
    emo_names = np.asarray(data.emotion_labels)
    result["emotion"] = classification_metrics(
        emo_names[emotion], emo_names[pred["emotion_pred"]], data.emotion_labels
    )
    # cross-entropy of the emotion head on this part: a smoother signal than UA on a small part
    result["emotion"]["loss"] = float(-pred["emotion_logp"][np.arange(len(emotion)),
                                                            emotion].mean())
    known = speaker >= 0
    if with_speaker and pred["speaker_pred"] is not None and known.any():
        spk_names = np.asarray(data.speaker_labels)
        result["speaker"] = classification_metrics(
            spk_names[speaker[known]], spk_names[pred["speaker_pred"][known]], data.speaker_labels
        )
    return result


def flat_metrics(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The history columns of one part's metrics: ``<split>_<task>_<wa|ua>`` and
    ``<split>_emotion_loss``."""
    row = {}
    for task in ("emotion", "speaker"):
        for name in ("wa", "ua"):
            block = metrics.get(task)
            row[f"{split}_{task}_{name}"] = float(block[name]) if block else float("nan")
    block = metrics.get("emotion")
    row[f"{split}_emotion_loss"] = float(block["loss"]) if block else float("nan")
    return row
