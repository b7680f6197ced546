"""SwAV-style Sinkhorn-Knopp equal-partition assignment, jointly over all ranks.

Scores ``S`` (n_local, K) between points and prototypes define the plan ``Q ∝ exp(S / ε)``. The iterations alternate
between the prototype marginal (every prototype receives ``1/K`` of the global mass; row sums all-reduced) and the
point marginal (every point carries ``1/n_global``, with ``n_global`` the number of points on all ranks). After the
last iteration each point's column is renormalised to 1, giving a soft assignment over prototypes per point.

This is entropic optimal transport with cost ``-S``, regularisation ``ε`` and uniform marginals, i.e. POT's
``ot.sinkhorn(1/n, 1/K, -S, reg=ε)`` after the same number of iterations, multiplied by ``n``.

Always computed in fp32 with autocast disabled and without gradient. The plain form exponentiates ``S / ε`` directly
(safe for cosine scores ``|S| <= 1`` at ε ≥ 0.05 and asserted); the log-domain form works with ``logsumexp`` and is
the one to use for small ε or unnormalised scores.
"""

from __future__ import annotations

import math

import torch

from motionrep.train import dist

_COSINE_TOL = 1e-4


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 10, log_domain: bool = False
) -> torch.Tensor:
    """Equal-partition soft assignments (n_local, K), rows summing to 1, for this rank's ``scores`` (n_local, K).

    Every rank of the process group must call it (the marginals are global). ``log_domain=False`` requires cosine
    scores in [-1, 1].
    """
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (n_points, n_prototypes) with n_prototypes > 0, got {tuple(scores.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        s = scores.detach().float()
        if log_domain:
            return _sinkhorn_log(s, epsilon, iterations)
        return _sinkhorn_exp(s, epsilon, iterations)


def _sinkhorn_exp(s: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    n_local, k = s.shape
    q = torch.exp(s / epsilon).t()  # (K, n_local)
    # One collective for the global mass, the global point count and the number of out-of-range scores, so that
    # every rank reaches the same verdict.
    stats = dist.all_reduce_sum(
        torch.stack([q.sum(), s.new_tensor(float(n_local)), (~(s.abs() <= 1 + _COSINE_TOL)).sum().float()])
    )
    total, n_global, bad = stats[0], stats[1], int(stats[2].item())
    if bad:
        raise ValueError(
            f"{bad} scores are not finite or lie outside [-1, 1]; the plain Sinkhorn expects cosine scores "
            "(use log_domain=True for unnormalised scores)"
        )
    q /= total
    for _ in range(iterations):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True)) * k  # prototype rows: global sum 1/K
        q /= q.sum(dim=0, keepdim=True) * n_global  # point columns: sum 1/n_global
    q *= n_global  # columns sum to 1
    return q.t()


def _global_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over ranks of per-rank ``logsumexp`` values ``x`` (any shape), exact in log space."""
    return torch.logsumexp(dist.all_gather_cat(x[None]), dim=0)


def _sinkhorn_log(s: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    k = s.shape[1]
    log_q = s.t() / epsilon  # (K, n_local)
    log_n_global = math.log(dist.all_reduce_sum(s.new_tensor(float(s.shape[0]))).item())
    log_k = math.log(k)
    for _ in range(iterations):
        log_q -= _global_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True)) + log_k
        log_q -= torch.logsumexp(log_q, dim=0, keepdim=True) + log_n_global
    return torch.softmax(log_q, dim=0).t()  # columns renormalised to 1
