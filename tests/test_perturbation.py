"""Forwarded feature perturbation: heatmaps of constructed predictors with known answers, the jvp machinery against
an explicit Jacobian, peak and tracking scores, and the glue on a micro Midway model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacfwd

from motionrep.eval.perturbation import (
    PerturbConfig,
    analyze_pairs,
    chain_tracks,
    jvp_heatmaps,
    peak_hits,
    plot_heatmaps,
    plot_tracks,
    token_centres,
    tracking_scores,
)
from motionrep.models.blocks import Block
from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig
from motionrep.models.vit import build_vit

GRID = (4, 4)
PATCH = 8


def moved(dx: int, dy: int) -> torch.Tensor:
    """For each token of the 4x4 grid, the index of the token (dx, dy) tokens away (wrapping)."""
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    return (((rows + dy) % 4) * 4 + (cols + dx) % 4).flatten()


def test_identity_predictor_peaks_at_the_source():
    source = torch.randn(16, 8)
    heat = jvp_heatmaps(lambda z: z, source, torch.arange(16), num_samples=4)
    torch.testing.assert_close(heat, torch.eye(16))


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (0, 2), (-1, 1)])
def test_shifting_predictor_peaks_at_the_shifted_position(dx, dy):
    source = torch.randn(16, 8)
    copy_from = moved(-dx, -dy)  # target token q shows the content of source token q - (dx, dy)
    heat = jvp_heatmaps(lambda z: 3.0 * z[copy_from] + 1.0, source, torch.arange(16), num_samples=3)
    assert torch.equal(heat.argmax(-1), moved(dx, dy))
    assert torch.allclose(heat.max(-1).values, torch.ones(16))


def test_jvp_heatmap_matches_explicit_jacobian():
    block = Block(8, 2, qkv_bias=False)
    source = torch.randn(6, 8)
    positions = torch.tensor([0, 3, 5])
    gen = torch.Generator().manual_seed(3)
    heat = jvp_heatmaps(lambda z: block(z[None])[0], source, positions, num_samples=5, generator=gen, chunk=4)
    draws = torch.randn(3 * 5, 8, generator=torch.Generator().manual_seed(3)).view(3, 5, 8)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        jac = jacfwd(lambda z: block(z[None])[0])(source)  # (M, D, N, D)
    expected = torch.stack(
        [
            F.cosine_similarity(torch.einsum("mdk,sk->smd", jac[:, :, p], draws[i]), draws[i][:, None], dim=-1).mean(0)
            for i, p in enumerate(positions.tolist())
        ]
    )
    torch.testing.assert_close(heat, expected, atol=1e-5, rtol=1e-4)


def test_peak_hits_and_tracking_scores():
    heat = torch.zeros(16, 16)
    heat[torch.arange(16), moved(-1, 0)] = 1.0  # every peak one column to the left (wrapping)
    centres = token_centres(GRID, PATCH)
    truth = centres - torch.tensor([8.0, 0.0])  # content moved one token left; column 0 leaves the frame
    hits = peak_hits(heat, truth, torch.ones(16, dtype=torch.bool), PATCH, GRID)
    cols = torch.arange(16) % 4
    assert torch.equal(hits["exact"], cols > 0)  # column 0 peaks wrap to column 3; its truth is clamped to 0
    assert torch.equal(hits["within1"], cols > 0)
    assert not hits["identity"].any()
    assert torch.equal(hits["moved"], cols > 0)  # column 0's truth leaves the frame and is clamped onto itself
    tokens = torch.tensor([[5, 6], [6, 6], [7, 10]])
    tracks = centres[tokens] + 1.0
    tracks[2, 1] = centres[14]  # truth one row below the prediction
    visible = torch.tensor([[True, True], [True, True], [True, False]])
    assert tracking_scores(tokens, tracks, visible, PATCH, GRID) == {"acc": 1.0, "token_dist": 0.0}
    visible[2, 1] = True
    assert tracking_scores(tokens, tracks, visible, PATCH, GRID) == pytest.approx({"acc": 3 / 4, "token_dist": 1 / 4})
    with pytest.raises(ValueError, match="no visible"):
        tracking_scores(tokens, tracks, torch.zeros_like(visible), PATCH, GRID)


def test_chain_tracks_follow_shifting_heatmaps():
    heat = torch.zeros(2, 16, 16)
    heat[:, torch.arange(16), moved(1, 0)] = 1.0  # heatmap peak: one column right
    heat[:, torch.arange(16), moved(0, 1)] = 0.5  # runner-up: one row down
    feats = torch.eye(16).expand(2, 16, 16)
    target_feats = feats[:, moved(0, -1)]  # features say "one row down"
    out = chain_tracks(heat, feats, target_feats, torch.tensor([0, 5]), top_k=2)
    assert out["top1"].tolist() == [[0, 5], [1, 6], [2, 7]]
    assert out["topk_sim"].tolist() == [[0, 5], [4, 9], [8, 13]]
    assert out["nn"].tolist() == [[0, 5], [4, 9], [8, 13]]


def identity_midway() -> MidwayDynamics:
    cfg = MidwayDynamicsConfig(
        levels=[1, 2], motion_tokens=2, motion_dim=16, midway_depth=1, midway_heads=2, forward_depth=2,
        forward_heads=2, backward=False, gating=False,
    )  # fmt: skip
    dyn = MidwayDynamics(cfg, 32, GRID)
    for block in dyn.forward_predictors[0].blocks:  # residual branches off: the predictor is the identity
        for linear in (block.attn.proj, block.mlp.fc2):
            torch.nn.init.zeros_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
    return dyn


def test_analyze_pairs_with_an_identity_predictor(tmp_path):
    encoder = build_vit("vit-micro", embed_dim=32, depth=2).eval()
    frames = torch.rand(2, 3, 32, 32)
    dyn = identity_midway().eval()
    out = analyze_pairs(encoder, encoder, dyn, frames, frames.flip(0), PerturbConfig(num_samples=2))
    assert out.heatmaps.shape == (2, 16, 16) and out.grid == GRID
    torch.testing.assert_close(out.heatmaps, torch.eye(16).expand(2, 16, 16))
    assert out.source_features.shape == out.target_features.shape == (2, 16, 32)
    back = analyze_pairs(encoder, encoder, dyn, frames, frames, PerturbConfig(num_samples=2, site="backward"))
    torch.testing.assert_close(back.heatmaps, out.heatmaps)
    plot_heatmaps(frames[0], frames[1], out.heatmaps[0], [0, 5], PATCH, GRID, tmp_path / "h.png")
    tokens = chain_tracks(out.heatmaps, out.source_features, out.target_features, torch.tensor([0, 5]), 5)
    plot_tracks(frames, tokens, token_centres(GRID, PATCH)[tokens["top1"]], PATCH, GRID, tmp_path / "t.png")
    assert (tmp_path / "h.png").stat().st_size > 0 and (tmp_path / "t.png").stat().st_size > 0
    with pytest.raises(ValueError, match="objective level"):
        analyze_pairs(encoder, encoder, dyn, frames, frames, PerturbConfig(level=2))
