"""The terms of the objective: declared once, read everywhere; the decoupling baselines beyond the
paper (gradient reversal, CLUB) on cases with known answers."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from hcld_lib.io import HcldError
from hcld_lib.method.adversarial import (
    SpeakerAdversary,
    adversarial_loss,
    reversal_scale,
    reverse_gradient,
)
from hcld_lib.method.club import ClubEstimator, club_bound, club_fit_loss, club_terms
from hcld_lib.method.terms import LOGGED, TERMS, emotion_settings, sampler_needs
from hcld_lib.training.config import RUN_FIELDS, RunConfig

# --- gradient reversal --------------------------------------------------------------------------


def test_gradient_reversal_is_the_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    upstream = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -0.3 * upstream)
    with pytest.raises(HcldError, match="scale"):
        reverse_gradient(x, -1.0)


def test_the_reversal_scale_ramps_from_zero_to_lambda():
    assert reversal_scale(0.0, 2.0) == 0.0
    assert reversal_scale(0.5, 1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert reversal_scale(1.0, 1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert reversal_scale(7.0, 1.0) == reversal_scale(1.0, 1.0)  # p clipped to [0, 1]
    assert reversal_scale(0.0, 0.7, "fixed") == 0.7
    with pytest.raises(HcldError, match="adversarial_schedule"):
        reversal_scale(0.1, 1.0, "linear")


def test_the_adversary_learns_speakers_while_the_encoder_is_pushed_the_other_way():
    torch.manual_seed(0)
    x_e = torch.randn(16, 4, requires_grad=True)
    speaker = torch.arange(16) % 3
    adversary = SpeakerAdversary(4, 3)
    loss = adversarial_loss(x_e, speaker, adversary, scale=1.0)
    loss.backward()
    plain = x_e.grad.clone()
    x_e.grad = None
    torch.nn.functional.cross_entropy(adversary(x_e), speaker).backward()
    # the same classifier loss; the encoder's gradient is reversed, the adversary's is not
    torch.testing.assert_close(plain, -x_e.grad)


# --- CLUB ---------------------------------------------------------------------------------------


def _gaussian_pair(rho: float, n: int = 40000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_club_with_the_true_conditional_gives_rho2_over_one_minus_rho2(rho):
    # x ~ N(0, 1), y = rho x + sqrt(1 - rho^2) e: q(y | x) = N(rho x, 1 - rho^2), and
    # E[I_CLUB] = E[log q(y|x)] - E_x E_y'[log q(y'|x)] = -1/2 + (1 + rho^2) / (2 (1 - rho^2))
    #           = rho^2 / (1 - rho^2)   (0.5625 at rho = 0.6, above the true MI 0.223)
    x, y = _gaussian_pair(rho)
    mu, logvar = rho * x, torch.full_like(x, math.log(1 - rho**2))
    bound = club_bound(y, mu, logvar).item()
    assert bound == pytest.approx(rho**2 / (1 - rho**2), abs=0.03)
    assert bound >= -0.5 * math.log(1 - rho**2) - 0.03
    # the fit loss is the conditional entropy: 1/2 log(2 pi e (1 - rho^2))
    fit = club_fit_loss(y, mu, logvar).item()
    assert fit == pytest.approx(0.5 * math.log(2 * math.pi * math.e * (1 - rho**2)), abs=0.02)


def test_club_estimator_fitted_by_likelihood_finds_the_dependence():
    torch.manual_seed(0)
    x, y = (t.float() for t in _gaussian_pair(0.6, n=4000))
    estimator = ClubEstimator(1, 1, 16)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        club_terms(x, y, estimator)["mi_fit"].backward()
        optimizer.step()
    with torch.no_grad():
        bound = club_terms(x, y, estimator)["mi"].item()
        independent = club_terms(x, y[torch.randperm(len(y))], estimator)["mi"].item()
    assert bound == pytest.approx(0.5625, abs=0.1)
    assert abs(independent) < 0.1


def test_club_gradients_go_where_they_should():
    torch.manual_seed(0)
    x_e = torch.randn(8, 3, requires_grad=True)
    x_s = torch.randn(8, 3, requires_grad=True)
    estimator = ClubEstimator(3, 3, 4)
    out = club_terms(x_e, x_s, estimator)
    params = list(estimator.parameters())
    # the bound reaches the embeddings, not q; the fit reaches q, not the embeddings
    bound_grads = torch.autograd.grad(out["mi"], [x_e, x_s, *params], retain_graph=True,
                                      allow_unused=True)
    assert bound_grads[0].abs().sum() > 0 and bound_grads[1].abs().sum() > 0
    assert all(g is None for g in bound_grads[2:])
    fit_grads = torch.autograd.grad(out["mi_fit"], [x_e, x_s, *params], allow_unused=True)
    assert fit_grads[0] is None and fit_grads[1] is None
    assert any(g is not None and g.abs().sum() > 0 for g in fit_grads[2:])


# --- the registry -------------------------------------------------------------------------------


def test_every_term_brings_its_weight_settings_and_logged_values():
    for term in TERMS:
        assert term.weight in RUN_FIELDS
        assert set(term.setting_names) <= RUN_FIELDS
        assert set(term.logged) <= set(LOGGED)
    assert {"adversarial", "mi", "mi_fit", "icld_pos"} <= set(LOGGED)


def test_what_the_settings_make_of_the_terms():
    hcld, emo_only = RunConfig(variant="hcld"), RunConfig(variant="emo_only")
    assert hcld.speaker_branch and not emo_only.speaker_branch
    assert RunConfig(variant="adversarial").speaker_branch  # the speaker task on X_s
    assert sampler_needs(hcld.settings()) == ("speaker_emotion", "emotion")
    assert sampler_needs(emo_only.settings()) == ()
    assert RunConfig(variant="hcld_supcon_speaker").sampler_needs == (
        "speaker_emotion", "speaker", "emotion")
    # X_e under separate branches: L_neg's margin and hinge do not reach it; orth couples
    decides = emotion_settings(hcld.settings())
    assert {"w_icld", "icld_pos_space", "w_lcl", "temperature"} <= decides
    assert not {"icld_margin", "icld_hinge", "w_ce_speaker"} & decides
    assert emotion_settings(RunConfig(variant="orth").settings()) is None
    assert emotion_settings(RunConfig(variant="mi").settings()) is None


def test_the_emotion_key_shares_only_what_cannot_reach_x_e():
    base = RunConfig(variant="hcld", dropout=0.0)
    assert base.replace(icld_margin=0.3).emotion_key() == base.emotion_key()
    assert base.replace(icld_hinge="above").emotion_key() == base.emotion_key()
    assert base.replace(icld_pos_space="speaker").emotion_key() != base.emotion_key()
    assert base.replace(temperature=0.2).emotion_key() != base.emotion_key()
    assert base.replace(branches="shared", icld_margin=0.3).emotion_key() != base.replace(
        branches="shared").emotion_key()
    assert base.replace(seed=1).emotion_key() != base.emotion_key()


def test_a_term_declared_once_appears_in_the_objective_the_run_name_and_the_logs(tmp_path):
    """A toy term (an L2 penalty on X_e with a setting of its own) added to the declarations
    before the package builds its registry: RunConfig gets its weight and setting, the run's
    name its departure, the history its column, and the objective its value."""
    script = textwrap.dedent(f'''
        import torch
        import hcld_lib.method.losses as losses
        from hcld_lib.method.term import Setting, Term

        def l2(i):
            return {{"l2": i.settings["l2_scale"] * i.out["x_e"].pow(2).mean()}}

        losses.TERMS = (*losses.TERMS, Term("l2", "an L2 penalty on X_e", l2,
                        sides=lambda s: {{"x_e": ("l2_scale",)}},
                        settings=(Setting("l2_scale", 1.0, "scale", low=0.0),)))
        import pandas as pd
        from hcld_lib.data.synthetic import synthesize_corpus
        from hcld_lib.features.extract import extract_features
        from hcld_lib.training.config import RunConfig
        from hcld_lib.training.run import train_run

        table = synthesize_corpus({str(tmp_path)!r} + "/corpus", n_utterances=48, seed=0)
        cache = extract_features(table, "fbank", {str(tmp_path)!r} + "/cache",
                                 max_seconds=2.0, progress=False)
        config = RunConfig(variant="emo_only", w_l2=0.5, l2_scale=2.0, features=str(cache.path),
                           out_dir={str(tmp_path)!r} + "/runs", max_epochs=1, embed_dim=8,
                           hidden_dim=8, n_layers=1, frame_stride=4, batch_size=8,
                           device="cpu", n_folds=2)
        metrics = train_run(config)
        history = pd.read_csv(config.run_dir / "history.csv")
        print(config.resolved_run_name)
        print(float(history.loc[0, "loss_l2"]) > 0)
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"HCLD_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "HCLD_CACHE_DIR": str(tmp_path / "cache-home")})
    assert done.returncode == 0, done.stderr[-3000:]
    name, logged = done.stdout.strip().splitlines()[-2:]
    assert name == "emo_only__cnn__paper-fold0__seed0__w_l2=0.5__l2_scale=2.0"
    assert logged == "True"
