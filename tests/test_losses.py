"""Loss values on cases worked out by hand, an independent SupCon oracle, degenerate batches."""

from __future__ import annotations

import math

import pytest
import torch

from hcld_lib.io import HcldError
from hcld_lib.method.losses import (
    icld_loss,
    lcl_loss,
    masked_contrastive_loss,
    orth_loss,
    speaker_emotion_pairs,
    supcon_loss,
)
from hcld_lib.method.models import DualBranchModel
from hcld_lib.method.terms import objective

E = math.e


def unit(deg: float, scale: float = 1.0) -> list[float]:
    """A 2-D vector at ``deg`` degrees (the losses are scale-free, so ``scale`` must not matter)."""
    r = math.radians(deg)
    return [scale * math.cos(r), scale * math.sin(r)]


def vecs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# --- pair miner ---------------------------------------------------------------------------------


def test_speaker_emotion_pairs_by_hand():
    # samples: 0=(spk0, neu) 1=(spk0, hap) 2=(spk1, neu) 3=(spk1, hap)
    pos, neg = speaker_emotion_pairs(labels(0, 1, 0, 1), labels(0, 0, 1, 1))
    assert pos.dtype == torch.bool and neg.dtype == torch.bool
    assert {tuple(p) for p in pos.nonzero().tolist()} == {(0, 1), (1, 0), (2, 3), (3, 2)}
    assert {tuple(p) for p in neg.nonzero().tolist()} == {(0, 2), (2, 0), (1, 3), (3, 1)}
    assert not pos.diagonal().any() and not neg.diagonal().any()


# --- ICLD ---------------------------------------------------------------------------------------


def icld_case():
    # emotion [0, 1, 0, 1], speaker [0, 0, 1, 1] -> P = {(0,1), (2,3)}, N = {(0,2), (1,3)}
    # X_e: 0 at 0 deg, 1 at 90 deg (cos 0); 2 at 0 deg, 3 at 60 deg (cos 0.5)
    x_e = vecs(unit(0, 2.0), unit(90), unit(0, 0.3), unit(60, 5.0))
    # X_s: 0 at 0 deg, 2 at 60 deg (cos 0.5); 1 at 90 deg, 3 at 180 deg (cos 0)
    x_s = vecs(unit(0), unit(90, 3.0), unit(60), unit(180, 0.5))
    return x_e, x_s, labels(0, 1, 0, 1), labels(0, 0, 1, 1)


def test_icld_by_hand_below_margin_hinge_default():
    x_e, x_s, emo, spk = icld_case()
    out = icld_loss(x_e, x_s, emo, spk, margin=0.2)
    # L_pos = mean((1 - 0)^2, (1 - 0.5)^2) = (1 + 0.25) / 2 = 0.625
    assert out["pos"].item() == pytest.approx(0.625, abs=1e-9)
    # L_neg (below: the text's reading) = mean(max(0, 0.5 - 0.2)^2, max(0, 0 - 0.2)^2)
    #       = (0.09 + 0) / 2 = 0.045
    assert out["neg"].item() == pytest.approx(0.045, abs=1e-9)
    assert out["total"].item() == pytest.approx(0.67, abs=1e-9)


def test_icld_printed_hinge_and_speaker_pos_space():
    x_e, x_s, emo, spk = icld_case()
    printed = icld_loss(x_e, x_s, emo, spk, margin=0.2, hinge="above")
    # L_neg (above: as printed) = mean(max(0, 0.2 - 0.5)^2, max(0, 0.2 - 0)^2)
    #       = (0 + 0.04) / 2 = 0.02
    assert printed["neg"].item() == pytest.approx(0.02, abs=1e-9)
    on_speaker = icld_loss(x_e, x_s, emo, spk, margin=0.2, pos_space="speaker")
    # L_pos on X_s: (0,1): 0 vs 90 deg, cos 0 -> 1; (2,3): 60 vs 180 deg, cos -0.5 -> 1.5^2 = 2.25
    # mean = (1 + 2.25) / 2 = 1.625; L_neg unchanged (0.045)
    assert on_speaker["pos"].item() == pytest.approx(1.625, abs=1e-9)
    assert on_speaker["neg"].item() == pytest.approx(0.045, abs=1e-9)


def test_icld_single_negative_pair_cos_half():
    # two utterances, different speakers, same emotion, cos(X_s) = 0.5, m = 0.2
    x_e = vecs(unit(0), unit(10))
    x_s = vecs(unit(0), unit(60))
    emo, spk = labels(3, 3), labels(0, 1)
    text = icld_loss(x_e, x_s, emo, spk, margin=0.2, hinge="below")
    printed = icld_loss(x_e, x_s, emo, spk, margin=0.2, hinge="above")
    assert text["neg"].item() == pytest.approx((0.5 - 0.2) ** 2, abs=1e-9)  # 0.09
    assert printed["neg"].item() == 0.0  # max(0, 0.2 - 0.5) = 0
    assert text["pos"].item() == 0.0  # no same-speaker pair
    # the text hinge pushes the pair apart: descending the loss lowers their cosine
    text["total"].backward()
    assert x_s.grad is not None and x_s.grad.abs().sum() > 0


def test_icld_rejects_unknown_switches():
    x_e, x_s, emo, spk = icld_case()
    with pytest.raises(HcldError, match="pos_space"):
        icld_loss(x_e, x_s, emo, spk, pos_space="both")
    with pytest.raises(HcldError, match="hinge"):
        icld_loss(x_e, x_s, emo, spk, hinge="squared")


# --- SupCon and the shared masked log-softmax ---------------------------------------------------


def test_supcon_by_hand():
    # tau = 1; labels [0, 0, 1, 1]; z0 = z1 = (1,0), z2 = (0,1), z3 = (-1,0)
    z = vecs(unit(0), unit(0, 4.0), unit(90), unit(180))
    loss = supcon_loss(z, labels(0, 0, 1, 1), temperature=1.0)
    # anchor 0: pos 1 (cos 1), others 2 (cos 0), 3 (cos -1): -log(e / (e + 1 + e^-1))
    a0 = math.log(1 + E**-1 + E**-2)
    # anchor 1: the same as anchor 0
    # anchor 2: pos 3 (cos 0), others 0, 1 (cos 0): -log(1 / 3)
    a2 = math.log(3)
    # anchor 3: pos 2 (cos 0), others 0, 1 (cos -1): -log(1 / (1 + 2 e^-1))
    a3 = math.log(1 + 2 / E)
    assert loss.item() == pytest.approx((2 * a0 + a2 + a3) / 4, abs=1e-9)


def test_supcon_excludes_anchors_without_positive():
    # labels [0, 0, 1]: anchor 2 has no positive and is left out of the mean
    # anchor 0: pos 1 (cos 1), other 2 (cos 0), tau = 1: -log(e / (e + 1)) = log(1 + 1/e)
    # anchor 1: the same
    z = vecs(unit(0), unit(0), unit(90))
    loss = supcon_loss(z, labels(0, 0, 1), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), abs=1e-9)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_supcon_matches_pytorch_metric_learning(temperature):
    from pytorch_metric_learning.losses import SupConLoss

    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(24, 16, dtype=torch.float64), dim=1)
    y = torch.arange(24) % 5  # every label at least four times
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    ours = supcon_loss(z1, y, temperature)
    oracle = SupConLoss(temperature=temperature)(z2, y)
    assert ours.item() == pytest.approx(oracle.item(), rel=1e-6)
    ours.backward()
    oracle.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-8)


def test_masked_contrastive_is_stable_at_tiny_temperature():
    torch.manual_seed(1)
    z = torch.randn(16, 8, requires_grad=True)
    y = torch.arange(16) % 4
    loss = supcon_loss(z, y, temperature=1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_masked_contrastive_general_contrast_set():
    # 1 anchor (1,0) against 3 contrast vectors at 0, 90, 180 deg; tau = 1
    anchors = vecs(unit(0))
    contrast = vecs(unit(0), unit(90), unit(180))
    valid = torch.tensor([[True, True, False]])  # the 180-deg vector is outside A(i)
    # positives 0 and 2, but 2 is not in A(i) and so ignored: -log(e / (e + 1)) = log(1 + 1/e)
    pos = torch.tensor([[True, False, True]])
    loss = masked_contrastive_loss(anchors, contrast, pos, valid, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 1 / E), abs=1e-9)
    with pytest.raises(HcldError, match="masks"):
        masked_contrastive_loss(anchors, contrast, pos.T, valid, temperature=1.0)


# --- label-anchored -----------------------------------------------------------------------------


def test_label_anchored_by_hand_and_include_self_switch():
    # tau = 1; emotion [0, 0, 1]; label anchors: emotion 0 -> (1,0), emotion 1 -> (0,1)
    label_emb = vecs(unit(0), unit(0, 2.0), unit(90))
    x_e = vecs(unit(0), unit(90), unit(90, 3.0))
    emo = labels(0, 0, 1)
    excl = lcl_loss(label_emb, x_e, emo, temperature=1.0)
    # A(i) excludes i. anchor 0 (1,0): A={1,2}, P={1}; logits 0, 0 -> -log(1/2) = log 2
    # anchor 1 (1,0): A={0,2}, P={0}; logits 1, 0 -> -log(e/(e+1)) = log(1 + 1/e)
    # anchor 2 (0,1): A={0,1}, P={} -> left out
    assert excl.item() == pytest.approx((math.log(2) + math.log(1 + 1 / E)) / 2, abs=1e-9)
    incl = lcl_loss(label_emb, x_e, emo, temperature=1.0, include_self=True)
    # A(i) = all. anchors 0 and 1 (1,0): logits 1, 0, 0; P={0,1}
    #   -1/2 [(1 - log(e+2)) + (0 - log(e+2))] = log(e + 2) - 1/2
    # anchor 2 (0,1): logits 0, 1, 1; P={2}: -log(e / (1 + 2e)) = log(1 + 2e) - 1
    expected = (2 * (math.log(E + 2) - 0.5) + math.log(1 + 2 * E) - 1) / 3
    assert incl.item() == pytest.approx(expected, abs=1e-9)
    assert incl.item() != pytest.approx(excl.item())


def test_label_anchored_rejects_unprojected_labels():
    with pytest.raises(HcldError, match="project"):
        lcl_loss(torch.randn(4, 384), torch.randn(4, 8), labels(0, 1, 0, 1))


# --- orthogonality ------------------------------------------------------------------------------


def test_orthogonality_zero_for_orthogonal_and_positive_for_identical():
    a = [1.0, 1.0, -1.0, -1.0]
    b = [1.0, -1.0, 1.0, -1.0]
    c = [1.0, -1.0, -1.0, 1.0]  # a, b, c: zero-mean, pairwise orthogonal columns
    x_e = torch.tensor([a, b], dtype=torch.float64).T.requires_grad_(True)  # [4, 2]
    x_s = torch.tensor([c], dtype=torch.float64).T * 3.0 + 7.0  # [4, 1], shift/scale-free
    assert orth_loss(x_e, x_s).item() == pytest.approx(0.0, abs=1e-12)
    # identical single column a: Z = a / sqrt(1 + eps); Z^T Z = 4 / (1 + eps); 16 / 4 = 4
    col = torch.tensor([a], dtype=torch.float64).T
    same = orth_loss(col, col, eps=1e-5, form="batch")
    assert same.item() == pytest.approx(4.0 / (1 + 1e-5) ** 2, rel=1e-9)
    # correlation form: (4 / (1 + eps))^2 / (B^2 * E_e * E_s) = 16 / (1 + eps)^2 / 16
    same_corr = orth_loss(col, col, eps=1e-5)
    assert same_corr.item() == pytest.approx(1.0 / (1 + 1e-5) ** 2, rel=1e-9)
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    assert orth_loss(x, x).item() > orth_loss(x, torch.randn(32, 6)).item()


def test_orthogonality_correlation_form_is_the_batch_form_rescaled():
    torch.manual_seed(1)
    x_e, x_s = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    batch = orth_loss(x_e, x_s, form="batch")
    corr = orth_loss(x_e, x_s, form="correlation")
    assert corr.item() == pytest.approx(batch.item() / (16 * 5 * 3), rel=1e-12)
    assert 0.0 <= corr.item() <= 1.0
    with pytest.raises(HcldError, match="form='frobenius'"):
        orth_loss(x_e, x_s, form="frobenius")


# --- task loss ----------------------------------------------------------------------------------


def test_objective_adds_the_weighted_terms_it_computes():
    from hcld_lib.method.terms import SETTINGS, WEIGHTS, objective

    def settings(**weights):
        return {**{w: 0.0 for w in WEIGHTS}, **{k: v.default for k, v in SETTINGS.items()},
                "w_ce_emotion": 1.0, "w_ce_speaker": 1.0, **weights}

    # uniform logits: CE = log(n_classes); embeddings that make every contrastive term exact
    out = {"x_e": torch.tensor([unit(0), unit(90), unit(0)], dtype=torch.float64),
           "x_s": torch.tensor([unit(0), unit(0), unit(90)], dtype=torch.float64),
           "emotion_logits": torch.zeros(3, 4, dtype=torch.float64),
           "speaker_logits": torch.zeros(3, 10, dtype=torch.float64)}
    emo, spk = labels(0, 1, 0), labels(0, 0, 1)
    total, terms = objective(out, emo, spk, settings())
    assert set(terms) == {"ce_emotion", "ce_speaker"}
    assert total.item() == pytest.approx(math.log(4) + math.log(10))
    total, terms = objective(out, emo, spk, settings(w_ce_speaker=0.5))
    assert total.item() == pytest.approx(math.log(4) + 0.5 * math.log(10))
    # ICLD: positive pair (0, 1) is orthogonal in X_e -> (1 - 0)^2; negative pair (0, 2) is
    # orthogonal in X_s -> max(0, 0 - 0)^2 = 0
    total, terms = objective(out, emo, spk, settings(w_icld=2.0))
    assert set(terms) == {"ce_emotion", "ce_speaker", "icld_pos", "icld_neg", "icld"}
    assert terms["icld_pos"].item() == pytest.approx(1.0)
    assert terms["icld_neg"].item() == pytest.approx(0.0)
    assert total.item() == pytest.approx(math.log(4) + math.log(10) + 2.0)
    # a term that trains a network of its own needs it
    with pytest.raises(HcldError, match="'lcl' trains a network"):
        objective(out, emo, spk, settings(w_lcl=1.0))
    # a term on X_s without a speaker branch is a clear error
    with pytest.raises(HcldError, match="no speaker branch"):
        objective({**out, "x_s": None, "speaker_logits": None}, emo, spk, settings())


# --- degenerate batches -------------------------------------------------------------------------


def all_losses(x_e, x_s, emo, spk, label_emb):
    icld = icld_loss(x_e, x_s, emo, spk, margin=0.1)
    return {
        "icld_pos": icld["pos"],
        "icld_neg": icld["neg"],
        "icld_printed": icld_loss(x_e, x_s, emo, spk, margin=0.1, hinge="above")["total"],
        "icld_speaker": icld_loss(x_e, x_s, emo, spk, pos_space="speaker")["total"],
        "supcon": supcon_loss(x_e, emo),
        "supcon_spk": supcon_loss(x_s, spk),
        "label": lcl_loss(label_emb, x_e, emo),
        "label_self": lcl_loss(label_emb, x_e, emo, include_self=True),
        "orth": orth_loss(x_e, x_s),
    }


@pytest.mark.parametrize(
    "emo, spk, empty",
    [
        ((0, 1, 2, 3), (0, 0, 0, 0), {"icld_neg", "supcon", "label"}),  # one speaker
        ((2, 2, 2, 2), (0, 1, 2, 3), {"icld_pos", "supcon_spk"}),  # one emotion
        ((0, 1), (0, 1), {"icld_pos", "icld_neg", "supcon", "supcon_spk", "label"}),  # B = 2
        ((0, 1, 2), (0, 1, 2), {"icld_pos", "icld_neg", "supcon", "supcon_spk", "label"}),
        ((1,), (4,), {"icld_pos", "icld_neg", "supcon", "supcon_spk", "label", "orth"}),  # B = 1
    ],
)
def test_degenerate_batches_give_finite_losses_and_gradients(emo, spk, empty):
    torch.manual_seed(0)
    b = len(emo)
    x_e = torch.randn(b, 8, requires_grad=True)
    x_s = torch.randn(b, 8, requires_grad=True)
    label_emb = torch.randn(b, 8, requires_grad=True)
    losses = all_losses(x_e, x_s, torch.tensor(emo), torch.tensor(spk), label_emb)
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
        assert value.requires_grad, f"{name} is not connected to the inputs"
        if name in empty:
            assert value.item() == 0.0, name
    sum(losses.values()).backward()
    for t in (x_e, x_s, label_emb):
        assert t.grad is not None and torch.isfinite(t.grad).all()


def test_empty_pair_set_gradient_is_zero():
    x_e = torch.randn(3, 4, requires_grad=True)
    supcon_loss(x_e, labels(0, 1, 2)).backward()
    assert torch.equal(x_e.grad, torch.zeros_like(x_e))


# --- the total HCLD loss through the model ------------------------------------------------------


class _FixedAnchors(torch.nn.Module):
    """Stands in for the label anchors: a learnable [K, E] table, one row per emotion."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, emotion: torch.Tensor) -> torch.Tensor:
        return self.table[emotion]


def _hcld(**changes):
    from hcld_lib.training.config import RunConfig

    return RunConfig(variant="hcld", **changes).settings()


def test_total_hcld_loss_reaches_both_branches():
    torch.manual_seed(0)
    model = DualBranchModel(
        input_dim=6, n_emotions=4, n_speakers=3, emotion_arch="cnn", speaker_arch="lstm",
        embed_dim=8, hidden_dim=8, n_layers=1, dropout=0.0,
    )
    anchors = _FixedAnchors(torch.randn(4, 8))
    label_emb = anchors.table
    x = torch.randn(8, 12, 6)
    lengths = torch.tensor([12, 9, 5, 12, 7, 3, 12, 10])
    emo = labels(0, 1, 2, 3, 0, 1, 2, 3)
    spk = labels(0, 0, 1, 1, 2, 2, 0, 1)
    out = model(x, lengths)
    contrastive = (
        icld_loss(out["x_e"], out["x_s"], emo, spk)["total"]
        + supcon_loss(out["x_e"], emo)
        + lcl_loss(label_emb[emo], out["x_e"], emo)
    )
    # the contrastive terms alone already reach the speaker branch (through L_neg)
    spk_params = list(model.speaker_encoder.parameters())
    grads = torch.autograd.grad(contrastive, spk_params, retain_graph=True)
    assert any(g.abs().sum() > 0 for g in grads)
    total, _ = objective(out, emo, spk, _hcld(), {"lcl": anchors})
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for branch in ("emotion_encoder", "speaker_encoder", "emotion_head", "speaker_head"):
        norm = sum(p.grad.abs().sum() for p in getattr(model, branch).parameters())
        assert norm > 0, branch
    assert label_emb.grad is not None and label_emb.grad.abs().sum() > 0


def _emotion_grads(branches: str, drop_speaker_terms: bool) -> list[torch.Tensor]:
    """Gradients of the HCLD objective on the emotion path's parameters, with or without the
    terms that read X_s only (speaker CE and L_neg)."""
    torch.manual_seed(0)
    model = DualBranchModel(input_dim=6, n_emotions=4, n_speakers=3, embed_dim=8, hidden_dim=8,
                            n_layers=1, dropout=0.0, branches=branches)
    torch.manual_seed(1)
    x, lengths = torch.randn(8, 12, 6), torch.tensor([12, 9, 5, 12, 7, 3, 12, 10])
    emo, spk = labels(0, 1, 2, 3, 0, 1, 2, 3), labels(0, 0, 1, 1, 2, 2, 0, 1)
    anchors = _FixedAnchors(torch.randn(4, 8))
    total, terms = objective(model(x, lengths), emo, spk, _hcld(icld_margin=-0.5),
                             {"lcl": anchors})
    if drop_speaker_terms:
        total = total - terms["ce_speaker"] - terms["icld_neg"]
    params = list(model.emotion_path().parameters())
    return torch.autograd.grad(total, params)


def test_separate_branches_emotion_gradients_ignore_the_speaker_terms_byte_for_byte():
    full = _emotion_grads("separate", drop_speaker_terms=False)
    without = _emotion_grads("separate", drop_speaker_terms=True)
    assert all(torch.equal(a, b) for a, b in zip(full, without, strict=True))


def test_shared_branches_emotion_gradients_feel_the_speaker_terms():
    full = _emotion_grads("shared", drop_speaker_terms=False)
    without = _emotion_grads("shared", drop_speaker_terms=True)
    assert not all(torch.equal(a, b) for a, b in zip(full, without, strict=True))
