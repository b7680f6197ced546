"""Paper-protocol heads, feature taps, sliding-window / tiled inference and the unsupervised-segmentation pieces."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from motionrep.eval.paper.features import BackwardFeatures, MultiLevelFeatures, cls_attention, default_levels
from motionrep.eval.paper.flow_finetune import tile_starts, tiled_flow
from motionrep.eval.paper.heads import DPTHead, LinearHead, UperNetHead
from motionrep.eval.paper.seg_readout import sliding_window, window_starts
from motionrep.eval.paper.unsup_seg import attention_foreground, merge_clusters
from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig
from motionrep.models.vit import build_vit


def test_linear_head_is_layernorm_then_1x1_conv():
    head = LinearHead([4, 6], 3)
    a, b = torch.randn(2, 4, 5, 7), torch.randn(2, 6, 5, 7)
    x = torch.cat([a, b], 1)
    mu, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    gamma, beta = head.norm.weight[:, None, None], head.norm.bias[:, None, None]
    normed = (x - mu) / torch.sqrt(var + head.norm.eps) * gamma + beta
    expected = torch.einsum("oc,bchw->bohw", head.cls.weight[:, :, 0, 0], normed) + head.cls.bias[:, None, None]
    torch.testing.assert_close(head([a, b]), expected, atol=1e-5, rtol=1e-5)


def test_upernet_and_dpt_shapes():
    maps = [torch.randn(2, 16, 3, 5) for _ in range(4)]
    assert UperNetHead([16] * 4, 7, width=32)(maps).shape == (2, 7, 12, 20)
    dpt = DPTHead([16, 8, 16, 16], 3, width=32)
    maps[1] = maps[1][:, :8]
    assert dpt(maps, (24, 40)).shape == (2, 3, 24, 40)
    with pytest.raises(ValueError, match="4 token maps"):
        DPTHead([16, 16], 3)


def test_multilevel_taps_match_the_encoder():
    enc = build_vit("vit-micro").eval()
    x = torch.rand(1, 3, 16, 24)
    feats = MultiLevelFeatures(enc)(x)
    assert default_levels(12) == [3, 6, 9, 12] and default_levels(4) == [1, 2, 3, 4]
    last = enc(x)[:, 1:].transpose(1, 2).reshape(1, 64, 2, 3)
    torch.testing.assert_close(feats[-1], last)


def test_backward_features_top_down():
    enc = build_vit("vit-micro").eval()
    cfg = MidwayDynamicsConfig(levels=[1, 2, 3, 4], backward_heads=2, forward_heads=2, midway_heads=1, motion_dim=32)
    dyn = MidwayDynamics(cfg, 64, enc.pos_grid).eval()
    x = torch.rand(2, 3, 16, 16)
    v = BackwardFeatures(enc, dyn)(x)
    assert [t.shape for t in v] == [(2, 64, 2, 2)] * 3
    z = enc(x, taps=[1, 2, 3, 4])
    v3 = dyn.student_backward[2](z[2], z[3])  # v^3 = backward(z^3, v^4 = z^4)
    torch.testing.assert_close(v[2], v3[:, 1:].transpose(1, 2).reshape(2, 64, 2, 2))
    with pytest.raises(ValueError, match="objective levels"):
        BackwardFeatures(enc, dyn, [4])


def test_cls_attention_against_sdpa_with_identity_values():
    enc = build_vit("vit-micro").eval()
    x = torch.rand(2, 3, 16, 24)
    tokens = enc.embed(x)
    for block in enc.blocks[:-1]:
        tokens = block(tokens)
    last = enc.blocks[-1]
    b, n, c = tokens.shape
    q, k, _ = last.attn.qkv(last.norm1(tokens)).view(b, n, 3, last.attn.heads, -1).permute(2, 0, 3, 1, 4)
    eye = torch.eye(n).expand(b, last.attn.heads, n, n)
    weights = F.scaled_dot_product_attention(q, k, eye)  # attention @ I = attention weights
    expected = weights[:, :, 0, 1:].reshape(b, -1, 2, 3)
    torch.testing.assert_close(cls_attention(enc, x), expected, atol=1e-5, rtol=1e-4)


def test_attention_foreground_matches_a_per_image_loop():
    attn = torch.rand(3, 2, 4, 5)
    got = attention_foreground(attn, 0.6)
    for i in range(3):
        a = attn[i].mean(0).flatten()
        a = a / a.sum()
        order = sorted(range(len(a)), key=lambda j: -a[j].item())
        keep, mass = set(), 0.0
        for j in order:
            if mass >= 0.6:
                break
            keep.add(j)
            mass += a[j].item()
        assert set(torch.nonzero(got[i].flatten()).flatten().tolist()) == keep


def test_merge_clusters_groups_nearby_centroids():
    centroids = torch.tensor([[0.0, 0], [0.1, 0], [10, 10], [10.1, 10], [50, 50]])
    foreground = torch.tensor([True, True, True, True, False])
    mapping = merge_clusters(centroids, foreground, 2)
    assert mapping[4] == 0
    assert mapping[0] == mapping[1] and mapping[2] == mapping[3] and mapping[0] != mapping[2]
    assert set(mapping[:4].tolist()) == {1, 2}


def test_sliding_window_equals_direct_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1)
    image = torch.rand(3, 37, 50)
    assert window_starts(50, 16, 12) == [0, 12, 24, 34] and window_starts(10, 16, 12) == [0]
    got = sliding_window(model, image, 4, crop=16, stride=12)
    torch.testing.assert_close(got, model(image[None])[0], atol=1e-5, rtol=1e-5)


class _PointwiseFlow(nn.Module):
    def forward(self, a, b):
        return (a - b)[:, :2] * 3.0, a[:, 2:] - 0.5


def test_tiled_flow_equals_direct_for_a_pointwise_model():
    a, b = torch.rand(3, 30, 45), torch.rand(3, 30, 45)
    assert tile_starts(45, 16, 0.5) == [0, 7, 14, 22, 29] and tile_starts(10, 16, 0.5) == [0]
    got = tiled_flow(_PointwiseFlow(), a, b, (16, 16), 0.5)
    torch.testing.assert_close(got, (a - b)[:2] * 3.0, atol=1e-5, rtol=1e-5)
    small = tiled_flow(_PointwiseFlow(), a[:, :10, :12], b[:, :10, :12], (16, 16), 0.5)
    torch.testing.assert_close(small, (a - b)[:2, :10, :12] * 3.0, atol=1e-5, rtol=1e-5)
