import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from motionrep.models.heads import DINOHead, MLPProjector


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_dino_head_parameter_counts():
    assert _count(DINOHead(384, 65536, norm_last_layer=False)) == 22_352_128  # midway.md §3.6 / §3.9
    assert _count(DINOHead(128, 1024, hidden=512, bottleneck=128)) == 526_464  # midway-synth-tiny: 0.53 M


def test_dino_head_matches_reference_weight_norm():
    head = DINOHead(32, 50, hidden=64, bottleneck=16, norm_last_layer=False)
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    ref_last = nn.utils.parametrizations.weight_norm(nn.Linear(16, 50, bias=False))
    with torch.no_grad():
        ref_last.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        ref_last.parametrizations.weight.original1.copy_(head.last_layer.weight_v)
    x = torch.randn(5, 32)
    lin = [m for m in head.mlp if isinstance(m, nn.Linear)]
    h = F.gelu(lin[0](x))
    h = F.gelu(lin[1](h))
    z = lin[2](h)
    expected = ref_last(z / z.norm(dim=-1, keepdim=True))
    assert torch.allclose(head(x), expected, atol=1e-5)


def test_dino_head_loads_legacy_weight_norm_keys():
    head = DINOHead(8, 20, hidden=16, bottleneck=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = nn.utils.weight_norm(nn.Linear(4, 20, bias=False))  # what the official DINO checkpoints hold
    sd = legacy.state_dict()
    assert set(sd) == {"weight_g", "weight_v"}
    head.last_layer.load_state_dict(sd)
    z = torch.randn(3, 4)
    assert torch.allclose(head.last_layer(z), legacy(z), atol=1e-6)
    keys = {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {
        "last_layer.weight_g",
        "last_layer.weight_v",
    }
    assert set(head.state_dict()) == keys
    assert head.state_dict()["last_layer.weight_g"].shape == (20, 1)


def test_norm_last_layer_and_last_layer_params():
    frozen = DINOHead(8, 20, hidden=16, bottleneck=4, norm_last_layer=True)
    free = DINOHead(8, 20, hidden=16, bottleneck=4, norm_last_layer=False)
    assert not frozen.last_layer.weight_g.requires_grad and free.last_layer.weight_g.requires_grad
    for head in (frozen, free):
        assert torch.all(head.last_layer.weight_g == 1)
        assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(20), atol=1e-6)
        ids = {id(p) for p in head.last_layer_params()}
        assert ids == {id(head.last_layer.weight_g), id(head.last_layer.weight_v)}
    free(torch.randn(2, 8)).sum().backward()
    assert free.last_layer.weight_g.grad is not None and free.mlp[0].weight.grad is not None


def test_dino_head_layer_count():
    one = DINOHead(8, 20, hidden=16, bottleneck=4, layers=1)
    assert [type(m) for m in one.mlp] == [nn.Linear] and one.mlp[0].weight.shape == (4, 8)
    assert sum(isinstance(m, nn.Linear) for m in DINOHead(8, 20, layers=4, hidden=16, bottleneck=4).mlp) == 4
    with pytest.raises(ValueError, match="layers"):
        DINOHead(8, 20, layers=0)


def test_mlp_projector():
    assert _count(MLPProjector(384, [1024, 1024, 512, 256])) == 2_099_968  # MoSiC head, mosic.md §3.6: 2.10 M
    proj = MLPProjector(16, [32, 8], act=nn.ReLU)
    x = torch.randn(4, 3, 16)
    lin = [m for m in proj.mlp if isinstance(m, nn.Linear)]
    expected = F.normalize(lin[1](torch.relu(lin[0](x))), dim=-1)
    assert torch.allclose(proj(x), expected, atol=1e-6)
    assert torch.allclose(proj(x).norm(dim=-1), torch.ones(4, 3))
    raw = MLPProjector(16, [32, 8], act=nn.ReLU, normalize=False)
    raw.load_state_dict(proj.state_dict())
    assert torch.allclose(F.normalize(raw(x), dim=-1), proj(x), atol=1e-6)
    with pytest.raises(ValueError, match="dims"):
        MLPProjector(16, [])
