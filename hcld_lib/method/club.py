"""Mutual-information minimisation between X_e and X_s with the CLUB upper bound (Cheng et al.
2020).

A variational Gaussian ``q(x_s | x_e) = N(mu(x_e), diag(exp(logvar(x_e))))`` (two small networks,
:class:`ClubEstimator`) is fitted by likelihood, and the encoders minimise the bound::

    log q(y | x) = -1/2 sum_d [ (y_d - mu_d(x))^2 / var_d(x) + log var_d(x) + log 2 pi ]
    L_fit  = -1/B sum_i log q(x_s_i | x_e_i)              (on detached embeddings: trains q only)
    I_CLUB =  1/B sum_i [ log q(x_s_i | x_e_i) - 1/B sum_j log q(x_s_j | x_e_i) ]
           =  1/B sum_i sum_d [ 1/B sum_j (x_s_jd - mu_id)^2 - (x_s_id - mu_id)^2 ] / (2 var_id)
                                                      (with q held fixed: reaches the encoders)

A run minimises ``w_mi * I_CLUB + L_fit`` on batch-standardised embeddings, per dimension of
X_s (:func:`club_terms`): q follows the encoders, the encoders lower the bound.
For a Gaussian pair with correlation ``rho`` and the true conditional as q, ``E[I_CLUB] = rho^2 /
(1 - rho^2)``, above the true ``-1/2 log(1 - rho^2)``, and 0 for independent embeddings.

Shapes: ``B`` batch size, ``E_e`` / ``E_s`` the sizes of X_e / X_s, ``H`` the hidden size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hcld_lib.io import HcldError
from hcld_lib.method.losses import standardize
from hcld_lib.method.term import ModuleContext, Setting, Settings, Term, TermInputs


class ClubEstimator(nn.Module):
    """``x_e [B, E_e] -> (mu [B, E_s], logvar [B, E_s])``: one hidden layer of ``H`` each;
    ``logvar = tanh(.)`` keeps the variance in [1/e, e] (as the CLUB authors do)."""

    def __init__(self, dim_e: int, dim_s: int, hidden: int) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(dim_e, hidden), nn.ReLU(), nn.Linear(hidden, dim_s))
        self.logvar = nn.Sequential(nn.Linear(dim_e, hidden), nn.ReLU(),
                                    nn.Linear(hidden, dim_s), nn.Tanh())

    def forward(self, x_e: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(x_e), self.logvar(x_e)


def _check(x_s: Tensor, mu: Tensor, logvar: Tensor) -> None:
    if not (x_s.shape == mu.shape == logvar.shape) or x_s.dim() != 2:
        raise HcldError(f"CLUB: x_s {tuple(x_s.shape)}, mu {tuple(mu.shape)} and logvar "
                        f"{tuple(logvar.shape)} must all be [B, E_s]")


def club_bound(x_s: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``I_CLUB`` of the module docstring from ``x_s [B, E_s]`` and q's ``mu``, ``logvar``
    ``[B, E_s]`` (at ``x_e``): scalar. The mean over ``j`` is expanded as
    ``mean_j y_j^2 - 2 mu_i mean_j y_j + mu_i^2``, so no ``[B, B, E_s]`` tensor is made."""
    _check(x_s, mu, logvar)
    var = logvar.exp()
    positive = (x_s - mu).pow(2)
    mean_y, mean_y2 = x_s.mean(0, keepdim=True), x_s.pow(2).mean(0, keepdim=True)
    negative = mean_y2 - 2 * mu * mean_y + mu.pow(2)
    return ((negative - positive) / (2 * var)).sum(1).mean()


def club_fit_loss(x_s: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``L_fit = -1/B sum_i log q(x_s_i | x_e_i)`` (the Gaussian log-density, constants
    included): scalar."""
    _check(x_s, mu, logvar)
    log_q = -0.5 * ((x_s - mu).pow(2) / logvar.exp() + logvar + math.log(2 * math.pi))
    return -log_q.sum(1).mean()


def club_terms(x_e: Tensor, x_s: Tensor, estimator: ClubEstimator) -> dict[str, Tensor]:
    """``{"mi": I_CLUB / E_s, "mi_fit": L_fit / E_s}`` on the batch-standardised embeddings
    ``Z_e = standardize(x_e)``, ``Z_s = standardize(x_s)``: the bound with q's parameters held
    fixed (its gradient reaches ``x_e`` and ``x_s`` only) and q's likelihood on detached
    embeddings (its gradient reaches q only), both per dimension of X_s.

    Mutual information does not change when a dimension is shifted or scaled, but the Gaussian
    bound does: on raw embeddings the encoders lower it most cheaply by shrinking X_s's spread,
    and summed over dimensions it dwarfs the cross-entropies. Standardised and per dimension,
    the bound measures dependence only, on the scale of the other terms (like the orth
    penalty's correlation form).
    """
    z_e, z_s = standardize(x_e), standardize(x_s)
    fixed = {k: v.detach() for k, v in estimator.named_parameters()}
    mu, logvar = torch.func.functional_call(estimator, fixed, (z_e,))
    mu_fit, logvar_fit = estimator(z_e.detach())
    dims = z_s.shape[1]
    return {"mi": club_bound(z_s, mu, logvar) / dims,
            "mi_fit": club_fit_loss(z_s.detach(), mu_fit, logvar_fit) / dims}


def _mi(i: TermInputs) -> dict[str, Tensor]:
    return club_terms(i.out["x_e"], i.out["x_s"], i.module)


def _estimator(ctx: ModuleContext, s: Settings) -> ClubEstimator:
    return ClubEstimator(ctx.embed_dim, ctx.embed_dim, int(s["mi_hidden"]))


TERM = Term(
    "mi", "mutual information of X_e and X_s, its CLUB upper bound", _mi,
    sides=lambda s: {"x_e": ("mi_hidden",), "x_s": ("mi_hidden",)}, couples=True,
    settings=(Setting("mi_hidden", 64, "hidden units of each network of q(x_s | x_e)",
                      kind=int, low=1),),
    module=_estimator, parts=("mi_fit",), fitted=("mi_fit",),
)
