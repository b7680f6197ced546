"""Midway dynamics: parameter counts, shapes, gates, dense loss, hierarchy against an independent re-implementation
of midway.md §3.2, and the effect of every switch."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from motionrep.models.blocks import Block, CrossBlock
from motionrep.models.dynamics import (
    OFFICIAL_KEY_MAP,
    GatedPredictor,
    GateMLP,
    MidwayDynamics,
    MidwayDynamicsConfig,
    dense_loss,
    mean_token_cosine,
    official_key_to_local,
)

D = 32
MICRO = dict(
    levels=[1, 2, 3, 4],
    motion_tokens=4,
    motion_dim=16,
    midway_depth=2,
    midway_heads=2,
    forward_depth=3,
    forward_heads=2,
    backward_heads=2,
)


def micro(**overrides) -> MidwayDynamics:
    return MidwayDynamics(MidwayDynamicsConfig(**{**MICRO, **overrides}), D, (3, 3)).eval()


def features(n_levels: int = 4, b: int = 2, n: int = 10, requires_grad: bool = False) -> list[torch.Tensor]:
    return [torch.randn(b, n, D, requires_grad=requires_grad) for _ in range(n_levels)]


def jitter(module: torch.nn.Module) -> None:
    """Break the zero initialisations and the teacher == student symmetry."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reference_parameter_counts_match_paper():
    dyn = MidwayDynamics(MidwayDynamicsConfig(), 384, (14, 14))
    assert dyn.num_student_parameters() == 36_600_000
    gates = sum(numel(p.gates) for p in dyn.forward_predictors)
    assert dyn.pos_embed.numel() == 75_648
    assert dyn.motion_tokens.numel() == 1_920
    assert numel(dyn.student_backward) == 7_095_168
    assert numel(dyn.student_embed) == 73_920 and numel(dyn.motion_proj) == 74_112
    assert numel(dyn.midway_blocks) == 5_331_456
    assert gates == 2_668_032
    assert numel(dyn.forward_predictors) - gates == 21_279_744
    assert numel(dyn.teacher_backward) + numel(dyn.teacher_embed) == 7_095_168 + 73_920


@pytest.mark.parametrize("d", [32, 48])
def test_module_formulas(d):
    assert numel(Block(d, 2, qkv_bias=False)) == 12 * d * d + 10 * d
    assert numel(CrossBlock(d, 2)) == 16 * d * d + 15 * d
    assert numel(GateMLP(d, 4.0)) == 2 * d * d + 4 * d


def test_reference_sequence_lengths_with_cheap_widths():
    """404-token midway and 207-token predictor sequences at N = 197, with micro widths."""
    cfg = MidwayDynamicsConfig(
        levels=[1, 2, 3],
        motion_dim=16,
        midway_depth=1,
        midway_heads=2,
        forward_depth=2,
        forward_heads=2,
        backward_heads=2,
    )
    dyn = MidwayDynamics(cfg, 16, (14, 14))
    seen = []
    for i in range(2):
        dyn.midway_blocks[i][0].register_forward_hook(lambda m, a, o: seen.append(("midway", tuple(a[0].shape))))
        dyn.forward_predictors[i].blocks[0].register_forward_hook(
            lambda m, a, o: seen.append(("forward", tuple(a[0].shape)))
        )
    out = dyn([torch.randn(1, 197, 16) for _ in range(3)], [torch.randn(1, 197, 16) for _ in range(3)])
    assert seen == [("midway", (1, 404, 16)), ("forward", (1, 207, 16))] * 2
    for state in out.states:
        assert state.prediction.shape == (1, 197, 16)
        assert state.motion.shape == (1, 10, 16)
        assert state.midway_target.shape == (1, 197, 16)


def test_dense_loss_is_squared_distance_of_normalised_vectors():
    a, b = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    expected = ((a / a.norm(dim=-1, keepdim=True) - b / b.norm(dim=-1, keepdim=True)) ** 2).sum(-1)
    torch.testing.assert_close(dense_loss(a, b), expected)


def test_mean_token_cosine_matches_the_pairwise_matrix():
    x = torch.randn(3, 6, 8)
    u = x / x.norm(dim=-1, keepdim=True)
    cos = u @ u.transpose(1, 2)
    expected = ((cos.sum((1, 2)) - 6) / 30).mean()  # off-diagonal mean per sequence
    torch.testing.assert_close(mean_token_cosine(x), expected)
    assert mean_token_cosine(torch.ones(2, 4, 3)).item() == pytest.approx(1.0)  # collapsed tokens


def test_gate_formula_and_initial_value():
    gate = GateMLP(D, 4.0)
    torch.nn.init.normal_(gate.mlp.fc2.weight, std=0.5)
    x = torch.randn(2, 5, D)
    h = F.gelu(F.linear(F.layer_norm(x, (D,), gate.norm_layer.weight, gate.norm_layer.bias, 1e-6), *_wb(gate.mlp.fc1)))
    torch.testing.assert_close(gate(x), torch.sigmoid(F.linear(h, *_wb(gate.mlp.fc2)) + 4.0))
    dyn = micro()
    out = dyn(features(), features())
    for key, value in out.gate_stats.items():
        if key.startswith("gate_mean"):
            assert abs(value.item() - 1 / (1 + math.exp(-4))) < 5e-3


def _wb(linear):
    return linear.weight, linear.bias


@pytest.mark.parametrize("source", ["previous_block", "same_block"])
def test_gated_predictor_against_manual_recurrence(source):
    pred = GatedPredictor(D, 3, 2, 4.0, gating=True, gate_source=source, gate_bias=4.0)
    for gate in pred.gates:
        torch.nn.init.normal_(gate.mlp.fc2.weight, std=1.0)  # gates far from 1 so the timing matters
    motion, v = torch.randn(2, 3, D), torch.randn(2, 6, D)
    x0 = torch.cat([motion, v], 1)
    ones = torch.ones(2, 3, D)
    x1 = pred.blocks[0](x0)
    g2 = pred.gates[0]((x0 if source == "previous_block" else x1)[:, 3:])
    x2 = pred.blocks[1](x1, torch.cat([ones, g2], 1))
    g3 = pred.gates[1]((x1 if source == "previous_block" else x2)[:, 3:])
    x3 = pred.blocks[2](x2, torch.cat([ones, g3], 1))
    out, gates = pred(motion, v)
    torch.testing.assert_close(out, x3[:, 3:])
    torch.testing.assert_close(gates[0], g2)
    torch.testing.assert_close(gates[1], g3)


def test_gating_off_is_a_plain_residual_stack():
    pred = GatedPredictor(D, 3, 2, 4.0, gating=False, gate_source="previous_block", gate_bias=4.0)
    assert len(pred.gates) == 0
    motion, v = torch.randn(2, 3, D), torch.randn(2, 6, D)
    x = torch.cat([motion, v], 1)
    for block in pred.blocks:
        x = x + block.attn(block.norm1(x))
        x = x + block.mlp(block.norm2(x))
    out, gates = pred(motion, v)
    torch.testing.assert_close(out, x[:, 3:])
    assert gates == []


def reference_hierarchy(dyn: MidwayDynamics, zs: list[torch.Tensor], zt: list[torch.Tensor]) -> torch.Tensor:
    """midway.md §3.2 pseudo-code, written independently of the module's loop."""
    cfg = dyn.config
    t, n = cfg.motion_tokens, zs[0].shape[1]
    refine = cfg.refinement if cfg.refinement is not None else cfg.refine_source == "prediction"
    add = cfg.refinement if cfg.refinement is not None else cfg.motion_aggregation == "add"

    def run(blocks, x, *extra):
        for blk in blocks:
            x = blk(x, *extra)
        return x

    m = dyn.motion_tokens.expand(zs[0].shape[0], -1, -1)
    src_in, tgt_in, ctx_s, ctx_t = zs[-1], zt[-1], zs[-1], zt[-1]
    losses = {}
    top = len(cfg.levels) - 2
    for i in range(top, -1, -1):
        seq = torch.cat(
            [m, dyn.student_embed(src_in) + dyn.pos_embed[:, :n], dyn.teacher_embed(tgt_in) + dyn.pos_embed[:, n:]], 1
        )
        m_new = run(dyn.midway_blocks[i], seq)[:, :t]
        m = m_new if (i == top or not add) else m_new + m
        v_s = run(dyn.student_backward[i].blocks, zs[i], ctx_s) if cfg.backward else zs[i]
        if cfg.backward and cfg.refine_target == "teacher_backward":
            v_t = run(dyn.teacher_backward[i].blocks, zt[i], ctx_t)
        else:
            v_t = zt[i]
        pred, _ = dyn.forward_predictors[i](dyn.motion_proj(m), v_s)
        losses[cfg.levels[i]] = (2 - 2 * F.cosine_similarity(pred, zt[i], dim=-1)).mean()
        src_in = pred if refine else v_s
        tgt_in = v_t if cfg.refine_target == "teacher_backward" else zt[i]
        ctx_s, ctx_t = v_s, v_t
    return losses


SWITCHES = [
    {},
    {"refinement": False},
    {"refine_source": "features"},
    {"motion_aggregation": "replace"},
    {"refine_target": "teacher_raw"},
    {"backward": False},
    {"gating": False},
    {"gate_source": "same_block"},
    {"motion_init": "zeros"},
    {"backward_depth": 2},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "full")
def test_hierarchy_matches_reference(switch):
    dyn = micro(**switch)
    jitter(dyn)
    zs, zt = features(), features()
    out = dyn(zs, zt)
    expected = reference_hierarchy(dyn, zs, zt)
    assert out.level_losses.keys() == expected.keys()
    for level, value in expected.items():
        torch.testing.assert_close(out.level_losses[level], value)
    torch.testing.assert_close(out.loss, sum(expected.values()))


def test_switches_change_the_computation():
    zs, zt = features(), features()
    losses = {}
    for name, switch in [("full", {}), ("norefine", {"refinement": False}), ("raw", {"refine_target": "teacher_raw"})]:
        torch.manual_seed(1)
        dyn = micro(**switch)
        torch.manual_seed(2)
        jitter(dyn)
        losses[name] = dyn(zs, zt).level_losses[1]
    assert not torch.allclose(losses["full"], losses["norefine"])
    assert not torch.allclose(losses["full"], losses["raw"])


def test_module_sets_follow_switches():
    dyn = micro(levels=[3, 4])
    assert len(dyn.midway_blocks) == len(dyn.forward_predictors) == len(dyn.student_backward) == 1
    assert list(dyn(features(2), features(2)).level_losses) == [3]
    no_bw = micro(backward=False)
    assert not hasattr(no_bw, "student_backward") and not hasattr(no_bw, "teacher_backward")
    assert [type(s) for s, _ in no_bw.ema_pairs()] == [torch.nn.Linear]
    raw = micro(refine_target="teacher_raw")
    assert hasattr(raw, "student_backward") and not hasattr(raw, "teacher_backward")
    one_fwd = micro(forward_depth=1)
    assert all(len(p.gates) == 0 for p in one_fwd.forward_predictors)
    zeros = micro(motion_init="zeros")
    assert "motion_tokens" not in dict(zeros.named_parameters())
    assert "motion_tokens" not in zeros.state_dict()


def test_backward_off_feeds_encoder_features_to_the_predictor():
    dyn = micro(backward=False)
    seen = []
    dyn.forward_predictors[0].register_forward_hook(lambda m, a, o: seen.append(a[1]))
    zs = features()
    dyn(zs, features())
    torch.testing.assert_close(seen[0], zs[0])


def test_bidirectional_is_mean_of_directions_and_mean_reduction():
    dyn = micro()
    sx, sy, tx, ty = features(), features(), features(), features()
    both = dyn.pair_loss(sx, sy, tx, ty)
    forward, backward = dyn(sx, ty), dyn(sy, tx)
    torch.testing.assert_close(both.loss, (forward.loss + backward.loss) / 2)
    for level in both.level_losses:
        torch.testing.assert_close(
            both.level_losses[level], (forward.level_losses[level] + backward.level_losses[level]) / 2
        )
    one = micro(bidirectional=False)
    one.load_state_dict(dyn.state_dict())
    torch.testing.assert_close(one.pair_loss(sx, sy, tx, ty).loss, forward.loss)
    mean = micro(level_reduction="mean", level_weights=[1.0, 0.5, 2.0])
    mean.load_state_dict(dyn.state_dict())
    out = mean(sx, ty)
    weighted = sum(w * forward.level_losses[lv] for w, lv in zip([1.0, 0.5, 2.0], [1, 2, 3], strict=True))
    torch.testing.assert_close(out.loss, weighted / 3)


def test_copy_baseline_and_gradient_flow():
    dyn = micro()
    zs, zt = features(requires_grad=True), features(requires_grad=True)
    out = dyn(zs, zt)
    for i, level in enumerate([1, 2, 3]):
        torch.testing.assert_close(out.copy_losses[level], dense_loss(zs[i], zt[i]).mean())
    out.loss.backward()
    assert all(z.grad is None for z in zt), "teacher targets must not receive gradients"
    assert all(z.grad is not None for z in zs)
    assert all(p.grad is None for p in dyn.teacher_backward.parameters())
    assert dyn.teacher_embed.weight.grad is None


def test_no_cls_token_and_other_grid_sizes():
    dyn = micro(use_cls_token=False)
    assert dyn.pos_embed.shape == (1, 18, 16)
    out = dyn(features(), features())  # CLS dropped: 9 patch tokens per frame
    assert out.states[0].prediction.shape == (2, 9, D)
    full = micro()
    torch.nn.init.normal_(full.pos_embed)
    pos = full.midway_pos_embed(1 + 36, None)
    assert pos.shape == (1, 74, 16)
    for k, half in enumerate(full.pos_embed.split(10, dim=1)):
        torch.testing.assert_close(pos[:, 37 * k], half[:, 0])
        grid = half[:, 1:].reshape(1, 3, 3, 16).permute(0, 3, 1, 2)
        expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(pos[:, 37 * k + 1 : 37 * (k + 1)], expected)
    assert full(features(n=1 + 12), features(n=1 + 12), grid_hw=(3, 4)).states[0].prediction.shape == (2, 13, D)
    with pytest.raises(ValueError, match="square"):
        full(features(n=1 + 12), features(n=1 + 12))


def test_ema_teachers_start_as_copies():
    dyn = micro()
    for student, teacher in dyn.ema_pairs():
        for (ks, ps), (kt, pt) in zip(student.state_dict().items(), teacher.state_dict().items(), strict=True):
            assert ks == kt and torch.equal(ps, pt)
        assert not any(p.requires_grad for p in teacher.parameters())


def test_official_key_map_covers_every_local_key():
    dyn = MidwayDynamics(MidwayDynamicsConfig(**{**MICRO, "backward_depth": 1}), D, (3, 3))
    official = {
        "module.pos_embed": "pos_embed",
        "module.motion_blocks_2.1.attn.qkv.weight": "midway_blocks.2.1.attn.qkv.weight",
        "module.forward_predictor_0.2.mlp.fc2.bias": "forward_predictors.0.blocks.2.mlp.fc2.bias",
        "module.gating_mlps_1.1.norm_layer.weight": "forward_predictors.1.gates.1.norm_layer.weight",
        "module.student_feature_blocks_0.0.cross_attn.projq.weight": "student_backward.0.blocks.0.cross_attn.projq."
        "weight",
        "teacher_feature_blocks_2.0.norm_y.bias": "teacher_backward.2.blocks.0.norm_y.bias",
    }
    for key, local in official.items():
        assert official_key_to_local(key) == local
    for key in dyn.state_dict():  # every local key has an official name that maps back to it
        names = []
        for src, dst in OFFICIAL_KEY_MAP.items():
            match = re.match(re.escape(dst).replace(re.escape("{i}"), r"(\d+)"), key)
            if match:
                names.append((src.format(i=match.group(1)) if match.groups() else src) + key[match.end() :])
        assert len(names) == 1 and official_key_to_local("module." + names[0]) == key, key
    with pytest.raises(KeyError, match="no mapping"):
        official_key_to_local("module.unknown.weight")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"levels": [3]}, "levels"),
        ({"levels": [6, 3, 12]}, "levels"),
        ({"level_weights": [1.0]}, "level_weights"),
        ({"gate_source": "next"}, "gate_source"),
        ({"refinement": True, "refine_source": "features"}, "refinement"),
        ({"midway_depth": 0}, "midway_depth"),
    ],
)
def test_config_errors(override, message):
    with pytest.raises(ValueError, match=message):
        MidwayDynamicsConfig(**override).validate()
