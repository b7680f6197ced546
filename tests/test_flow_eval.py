"""Motion protocols: DIS on a known translation, feature-matching flow, the flow probe."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from motionrep.data.labeled import FlowSet
from motionrep.eval import flow as FL
from motionrep.eval.features import ViTFeatures
from motionrep.models.vit import build_vit


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((h, w, 3)), sigma=(1.5, 1.5, 0))
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def test_dis_recovers_a_known_translation():
    big = textured(96, 96, 0)
    dx, dy = 3, -2  # content moves right by 3 and up by 2 from frame 1 to frame 2
    f1 = big[16:80, 16:80]
    f2 = big[16 - dy : 80 - dy, 16 - dx : 80 - dx]
    t1, t2 = (torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1) for f in (f1, f2))
    flow = FL.dis_flow(t1, t2)
    interior = flow[:, 8:-8, 8:-8]
    assert flow.shape == (2, 64, 64)
    assert interior[0].median().item() == pytest.approx(dx, abs=0.25)
    assert interior[1].median().item() == pytest.approx(dy, abs=0.25)


def test_match_flow_reads_token_shifts_with_the_right_axes():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(1, 16, 6, 7, generator=g)
    right = torch.roll(f1, shifts=1, dims=3)  # content moves one token right (+x)
    down = torch.roll(f1, shifts=2, dims=2)  # content moves two tokens down (+y)
    fr = FL.match_flow(f1, right, stride=8, radius=3, temperature=0.01)
    fd = FL.match_flow(f1, down, stride=8, radius=3, temperature=0.01)
    assert torch.allclose(fr[0, :, :, :-1], torch.tensor([8.0, 0.0]).view(2, 1, 1), atol=1e-3)
    assert torch.allclose(fd[0, :, :-2], torch.tensor([0.0, 16.0]).view(2, 1, 1), atol=1e-3)


def test_tokens_to_pixels_keeps_a_constant_field():
    flow = torch.tensor([2.5, -1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    up = FL.tokens_to_pixels(flow, (32, 32))
    assert up.shape == (1, 2, 32, 32) and torch.allclose(up, flow[:, :, :1, :1].expand_as(up))


@pytest.mark.parametrize("stride", [8, 14])
def test_flow_head_output_size(stride):
    head = FL.FlowHead(10, stride, width=8)
    out = head(torch.randn(2, 10, 3, 4), (3 * stride, 4 * stride))
    assert out.shape == (2, 2, 3 * stride, 4 * stride)


def translated_pairs(n: int, seed: int) -> FlowSet:
    """32x32 pairs of a textured image translated by a per-pair integer (dx, dy)."""
    rng = np.random.default_rng(seed)
    i1, i2, flows = [], [], []
    for k in range(n):
        big = textured(48, 48, seed * 100 + k)
        dx, dy = rng.integers(-3, 4, size=2)
        i1.append(big[8:40, 8:40])
        i2.append(big[8 - dy : 40 - dy, 8 - dx : 40 - dx])
        flows.append(np.broadcast_to(np.array([dx, dy], np.float32)[:, None, None], (2, 32, 32)))
    to_t = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return FlowSet(to_t(i1), to_t(i2), torch.from_numpy(np.stack(flows)), torch.ones(n, 32, 32, dtype=torch.bool))


def test_flow_probe_learns_and_finetune_leaves_the_model_untouched():
    train, val = translated_pairs(8, 0), translated_pairs(4, 1)
    vit = build_vit("vit-micro").eval()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    res = FL.flow_probe(ViTFeatures(vit), train, val, steps=30, batch_size=4, lr=3e-3, width=16)
    assert set(res.metrics) == {"epe", "px1", "px3", "px5"} and res.predictions.shape == (4, 2, 32, 32)
    assert np.mean(res.curve[-5:]) < np.mean(res.curve[:5])
    ft = FL.flow_probe(ViTFeatures(vit), train, val, steps=2, batch_size=4, width=8, finetune=True)
    assert np.isfinite(ft.metrics["epe"])
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())


def test_dis_baseline_scores_translations():
    res = FL.flow_dis(translated_pairs(3, 2))
    assert res.metrics["epe"] < 0.6 and res.predictions.shape == (3, 2, 32, 32)


def test_midway_pair_features_stack_the_paper_token_maps():
    from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig

    vit = build_vit("vit-micro").eval()
    cfg = MidwayDynamicsConfig(
        levels=[2, 3, 4], motion_dim=16, midway_depth=1, midway_heads=2, forward_depth=2, forward_heads=2,
        backward_heads=2, motion_tokens=2,
    )  # fmt: skip
    dyn = MidwayDynamics(cfg, vit.embed_dim, (4, 4)).eval()
    pair = FL.MidwayPairFeatures(vit, dyn)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = pair(a, b)
        top = ViTFeatures(vit, tap=4)(a)
    assert out.shape == (2, 3 * 64 + 16, 4, 4) and pair.dim == out.shape[1]
    assert torch.allclose(out[:, :64], top, atol=1e-5)
    assert not torch.allclose(out[:, -64:], out[:, -128:-64])  # two different prediction levels


def test_zero_flow_epe_is_the_mean_true_magnitude():
    val = translated_pairs(3, 3)
    res = FL.flow_zero(val)
    assert res.metrics["epe"] == pytest.approx(torch.linalg.vector_norm(val.flow, dim=1).mean().item(), rel=1e-6)


def test_midway_backward_features_refine_top_down():
    from motionrep.eval.features import MidwayBackwardFeatures
    from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig

    vit = build_vit("vit-micro").eval()
    cfg = MidwayDynamicsConfig(
        levels=[2, 3, 4], motion_dim=16, midway_depth=1, midway_heads=2, forward_depth=2, forward_heads=2,
        backward_heads=2, motion_tokens=2,
    )  # fmt: skip
    dyn = MidwayDynamics(cfg, vit.embed_dim, (4, 4)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = MidwayBackwardFeatures(vit, dyn)(x)
        taps = vit(x, taps=[2, 3, 4])
        v3 = dyn.teacher_backward[1](taps[1], taps[2])  # level 3 attends to the top level
        v2 = dyn.teacher_backward[0](taps[0], v3)  # level 2 attends to level 3's backward features
    assert out.shape == (2, 64, 4, 4)
    assert torch.allclose(out, v2[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4), atol=1e-5)
