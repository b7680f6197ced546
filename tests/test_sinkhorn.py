import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed import run_ranks
from motionrep.ops.sinkhorn import sinkhorn
from motionrep.train import dist


def _cosine_scores(n: int, k: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    protos = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return x @ protos.t()


def _pot_plan(scores: torch.Tensor, reg: float, iterations: int, method: str = "sinkhorn") -> np.ndarray:
    ot = pytest.importorskip("ot")
    s = scores.double().numpy()
    n, k = s.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.sinkhorn(
            np.full(n, 1.0 / n), np.full(k, 1.0 / k), -s, reg=reg, method=method, numItermax=iterations, stopThr=0.0
        )


@pytest.mark.parametrize("log_domain", [False, True])
def test_marginals_match_targets(log_domain):
    n, k = 600, 12
    scores = _cosine_scores(n, k, d=64)  # 64-d projections, as in the small presets
    q = sinkhorn(scores, 0.05, 10, log_domain=log_domain)
    assert q.shape == (n, k) and q.dtype == torch.float32
    assert torch.allclose(q.sum(1), torch.ones(n), atol=1e-5)  # every point's assignment sums to 1
    # every prototype receives 1/K of the mass (n/K points) to within 1e-3 (mosic.md §14) after 10 iterations
    assert torch.allclose(q.sum(0) / n, torch.full((k,), 1.0 / k), atol=1e-4)

    # the prototype marginal is the approximate one; it converges with more iterations
    def gap(it):
        return (sinkhorn(_cosine_scores(n, k, d=8), 0.05, it, log_domain=log_domain).sum(0) / n - 1.0 / k).abs().max()

    assert gap(3) > gap(10) > gap(40) and gap(40) < 1e-4


@pytest.mark.parametrize("eps", [0.05, 0.2])
def test_plain_matches_pot_sinkhorn_times_n(eps):
    n, k, it = 200, 10, 10
    scores = _cosine_scores(n, k, seed=1)
    plan = _pot_plan(scores, eps, it)  # OT plan with marginals 1/n (points) and ~1/K (prototypes)
    assert np.allclose(plan.sum(1), 1.0 / n)
    q = sinkhorn(scores, eps, it).double().numpy()
    np.testing.assert_allclose(q, n * plan, rtol=2e-4, atol=1e-9)


def test_log_domain_matches_pot_log_sinkhorn_small_eps():
    n, k, it, eps = 150, 8, 25, 0.005  # exp(1/0.005) overflows fp32: only the log domain can do this
    scores = _cosine_scores(n, k, seed=2)
    plan = _pot_plan(scores, eps, it, method="sinkhorn_log")
    q = sinkhorn(scores, eps, it, log_domain=True).double().numpy()
    np.testing.assert_allclose(q, n * plan, rtol=1e-3, atol=1e-6)


def test_log_domain_equals_plain_on_cosine_scores():
    scores = _cosine_scores(300, 16, seed=3)
    assert torch.allclose(sinkhorn(scores), sinkhorn(scores, log_domain=True), atol=1e-5)


def test_epsilon_and_iterations_change_result():
    scores = _cosine_scores(256, 16, seed=4)
    base = sinkhorn(scores, 0.05, 10)
    assert not torch.allclose(base, sinkhorn(scores, 0.1, 10), atol=1e-3)
    assert not torch.allclose(base, sinkhorn(scores, 0.05, 3), atol=1e-4)


def test_unnormalised_scores_log_domain_no_nan_plain_refuses():
    scores = 30.0 * torch.randn(128, 10)
    q = sinkhorn(scores, 0.05, 10, log_domain=True)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(128), atol=1e-5)
    assert torch.isnan(torch.exp(scores / 0.05)).any() or torch.isinf(torch.exp(scores / 0.05)).any()
    with pytest.raises(ValueError, match="log_domain=True"):
        sinkhorn(scores, 0.05, 10)


def test_fp32_under_autocast_and_no_grad():
    scores = _cosine_scores(64, 8).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn(scores)
    assert q.dtype == torch.float32 and not q.requires_grad
    assert torch.allclose(q, sinkhorn(scores.detach()))
    q16 = sinkhorn(scores.detach().bfloat16())
    assert q16.dtype == torch.float32


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.zeros(4, 0)])
def test_bad_shapes_and_parameters(bad):
    with pytest.raises(ValueError, match="scores must be"):
        sinkhorn(bad)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(4, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn(torch.zeros(4, 3), iterations=0)


def _rank_assignments(scores: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    start = sum(sizes[: dist.rank()])
    local = scores[start : start + sizes[dist.rank()]]
    return sinkhorn(local, 0.05, 10), sinkhorn(local, 0.05, 10, log_domain=True)


def test_two_gloo_ranks_equal_one_rank():
    scores = _cosine_scores(240, 12, seed=5)
    sizes = [100, 140]  # unequal shards: n_global comes from the all-reduce, not world_size * n_local
    parts = run_ranks(_rank_assignments, 2, scores, sizes)  # one process group for both variants
    for i, log_domain in enumerate((False, True)):
        full = sinkhorn(scores, 0.05, 10, log_domain=log_domain)
        assert torch.allclose(torch.cat([p[i] for p in parts]), full, atol=1e-6)
        # and it differs from running Sinkhorn independently per shard
        alone = sinkhorn(scores[:100], 0.05, 10, log_domain=log_domain)
        assert not torch.allclose(parts[0][i], alone, atol=1e-4)
