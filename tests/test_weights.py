"""Import of official key layouts (DINO, DINOv2, timm, MoSiC prefixes, Midway with dynamics) and motionrep runs,
export to safetensors and re-import: exact tensors, equal outputs, errors naming keys, unsafe files refused."""

from __future__ import annotations

import argparse
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from motionrep.config import load_config, to_yaml
from motionrep.models.dynamics import OFFICIAL_KEY_MAP, MidwayDynamics, MidwayDynamicsConfig
from motionrep.models.heads import DINOHead
from motionrep.models.vit import VisionTransformer, resample_pos_embed
from motionrep.models.weights import (
    WeightsError,
    export_model,
    load_encoder,
    load_encoder_into,
    load_exported,
    load_weights,
)
from motionrep.train.engine import build_method

WIDTH = 192  # a published width (3 heads) at which the layouts are the same as at 384 / 768


def randomized(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, so that no default value (LayerScale, LayerNorm, zeros) can hide a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def dino_vit(seed: int = 0, **kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=16, embed_dim=WIDTH, depth=2, num_heads=3) | kw
    return randomized(VisionTransformer(**args), seed)


def dinov2_vit(seed: int = 0, registers: int = 4) -> VisionTransformer:
    return dino_vit(seed, img_size=56, patch_size=14, layer_scale=1e-5, mask_token=True, num_register_tokens=registers)


def head_like(seed: int) -> DINOHead:
    return randomized(DINOHead(WIDTH, 96, hidden=64, bottleneck=32, norm_last_layer=False), seed)


def prefixed(module_or_state, prefix: str) -> dict[str, torch.Tensor]:
    state = module_or_state if isinstance(module_or_state, dict) else module_or_state.state_dict()
    return {prefix + k: v.clone() for k, v in state.items()}


def assert_same(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    a, b = module.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_outputs(encoder: VisionTransformer, reference: VisionTransformer, size: int) -> None:
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(encoder(x), reference(x))


def save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


# --------------------------------------------------------------------------------------------------- DINO family


def test_dino_release_backbone(tmp_path):
    ref = dino_vit()
    enc = load_encoder(save(ref.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth"))
    assert (enc.patch_size, enc.depth, enc.embed_dim, enc.num_heads, enc.pos_grid) == (16, 2, WIDTH, 3, (2, 2))
    assert enc.mask_token is None and enc.register_tokens is None
    assert_same(enc, ref)
    assert_same_outputs(enc, ref, 32)


def test_dino_training_checkpoint_teacher_student_and_head(tmp_path):
    student, teacher = dino_vit(0), dino_vit(1)
    s_head, t_head = head_like(2), head_like(3)
    ckpt = {
        "student": prefixed(student, "module.backbone.") | prefixed(s_head, "module.head."),
        "teacher": prefixed(teacher, "backbone.") | prefixed(t_head, "head."),
        "optimizer": torch.optim.SGD(student.parameters(), lr=0.1).state_dict(),
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
        "dino_loss": {"center": torch.zeros(1, 96)},
    }
    path = save(ckpt, tmp_path / "checkpoint.pth")
    got = load_weights(path)
    assert got.info.weights == "teacher" and got.info.method == "dino"
    assert {"optimizer", "epoch", "args", "dino_loss", "student"} <= set(got.info.ignored)
    assert_same(got.encoder, teacher)
    assert_same(got.head, t_head)
    z = torch.randn(5, WIDTH)
    assert torch.equal(got.head(z), t_head(z))
    got_s = load_weights(path, weights="student")
    assert_same(got_s.encoder, student)
    assert_same(got_s.head, s_head)


def test_dino_vits16_full_size_shapes(tmp_path):
    ref = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6).eval()
    enc = load_encoder(save(ref.state_dict(), tmp_path / "dino_vits16.pth"))
    assert (enc.num_heads, enc.depth, enc.pos_grid) == (6, 12, (14, 14))
    assert_same(enc, ref)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_release_backbone(tmp_path, registers):
    ref = dinov2_vit(registers=registers)
    enc = load_encoder(save(ref.state_dict(), tmp_path / "dinov2.pth"))
    assert enc.num_register_tokens == registers and enc.mask_token is not None and enc.patch_size == 14
    assert_same(enc, ref)
    assert_same_outputs(enc, ref, 56)


def test_dinov2_s14_reg_full_size_and_resample(tmp_path):
    ref = VisionTransformer(
        img_size=518,
        patch_size=14,
        embed_dim=384,
        depth=12,
        num_heads=6,
        layer_scale=1e-5,
        mask_token=True,
        num_register_tokens=4,
    )
    state = ref.state_dict()
    assert state["pos_embed"].shape == (1, 1370, 384)
    path = save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    enc = load_encoder(path, img_size=224)
    assert (enc.num_heads, enc.depth, enc.num_register_tokens, enc.pos_grid) == (6, 12, 4, (16, 16))
    expected = resample_pos_embed(state["pos_embed"], (37, 37), (16, 16), antialias=True)
    assert torch.equal(enc.pos_embed, expected)
    assert torch.equal(enc.register_tokens, state["register_tokens"])
    assert torch.equal(enc.blocks[11].ls2.gamma, state["blocks.11.ls2.gamma"])


def test_dinov2_timm_names(tmp_path):
    ref = dinov2_vit(registers=4)
    s = ref.state_dict()
    timm = {k: v for k, v in s.items() if k not in ("mask_token", "register_tokens", "cls_token", "pos_embed")}
    timm |= {
        "reg_token": s["register_tokens"],
        "cls_token": s["cls_token"] + s["pos_embed"][:, :1],  # timm folds the class position into the token
        "pos_embed": s["pos_embed"][:, 1:],
    }
    enc = load_encoder(save(timm, tmp_path / "timm.pth"))
    assert enc.mask_token is None and enc.num_register_tokens == 4
    ref.mask_token = None
    assert_same_outputs(enc, ref, 56)


def test_dinov2_training_checkpoint_block_chunks(tmp_path):
    student, teacher = dinov2_vit(0), dinov2_vit(1)

    def chunked(vit: VisionTransformer, prefix: str) -> dict:
        """DINOv2 ``block_chunks``: block N inside chunk N // 2 keeps its global index, ``blocks.<chunk>.<N>.``."""
        out = prefixed(vit, prefix)
        return {
            re.sub(r"blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // 2}.{m.group(1)}.", k): v
            for k, v in out.items()
        }

    model = chunked(student, "student.backbone.") | chunked(teacher, "teacher.backbone.")
    model |= prefixed(head_like(4), "teacher.dino_head.") | prefixed(head_like(5), "teacher.ibot_head.")
    path = save({"model": model, "iteration": 10}, tmp_path / "model_0000010.rank_0.pth")
    got = load_weights(path)
    assert got.info.weights == "teacher" and "DINOv2 block chunks" in got.info.layout
    assert_same(got.encoder, teacher)
    assert got.head is not None and any(x.startswith("ibot_head") for x in got.info.ignored)
    assert_same(load_encoder(path, weights="student"), student)


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "model.", "student.", "model.backbone.", "module.encoder."])
def test_mosic_backbone_any_prefix(tmp_path, prefix):
    ref = dinov2_vit(registers=0)
    enc = load_encoder(save(prefixed(ref, prefix), tmp_path / "mosic.pth"))
    assert_same(enc, ref)


def test_load_into_existing_encoder_resamples_like_timm(tmp_path):
    ref = dinov2_vit(registers=0)
    target = VisionTransformer(
        img_size=28, patch_size=14, embed_dim=WIDTH, depth=2, num_heads=3, layer_scale=1e-5, mask_token=True
    )
    text = load_encoder_into(target, save(prefixed(ref, "backbone."), tmp_path / "b.pth"), weights="student")
    assert "backbone." in text
    expected = resample_pos_embed(ref.pos_embed.detach(), (4, 4), (2, 2), antialias=True)
    assert torch.equal(target.pos_embed, expected) and torch.equal(target.cls_token, ref.cls_token)


# ---------------------------------------------------------------------------------------------------- Midway


def to_official(key: str) -> str:
    """Local MidwayDynamics key -> official ``motion_loss`` key (inverse of OFFICIAL_KEY_MAP), with DDP prefix."""
    for src, dst in OFFICIAL_KEY_MAP.items():
        pattern = "^" + re.escape(dst).replace(re.escape("{i}"), r"(\d+)")
        m = re.match(pattern, key)
        if m:
            return "module." + (src.format(i=m.group(1)) if m.groups() else src) + key[m.end() :]
    raise KeyError(key)


def midway_modules(seed: int = 0):
    cfg = MidwayDynamicsConfig(
        levels=[1, 2, 3], motion_dim=48, midway_depth=2, forward_depth=3, motion_tokens=4, gate_bias=2.0
    )
    dyn = randomized(MidwayDynamics(cfg, WIDTH, (2, 2)), seed)
    return dino_vit(seed + 1, depth=3), dino_vit(seed + 2, depth=3), head_like(seed + 3), head_like(seed + 4), dyn


def official_midway(path, with_args: bool = True) -> tuple:
    student, teacher, s_head, t_head, dyn = midway_modules()
    ckpt = {
        "student": prefixed(student, "module.backbone.") | prefixed(s_head, "module.dino_head."),
        "teacher": prefixed(teacher, "backbone.") | prefixed(t_head, "dino_head."),
        "motion_loss": {to_official(k): v.clone() for k, v in dyn.state_dict().items()},
        "dino_loss": {"center": torch.zeros(1, 96)},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 300,
    }
    if with_args:
        ckpt["args"] = OmegaConf.create(
            {
                "arch": "vit_small",
                "motion_feature_levels": [0, 1, 2],
                "midway_model_configs": {
                    "num_motion_heads": 3,
                    "num_pred_heads": 6,
                    "num_feature_heads": 6,
                    "gating_bias": 2,
                    "motion_agg_type": "add",
                    "motion_tokens": 4,
                },
                "data_path": "${oc.env:HOME}",
            }
        )
    return save(ckpt, path), (student, teacher, s_head, t_head, dyn)


def assert_same_dynamics(dyn: MidwayDynamics, ref: MidwayDynamics) -> None:
    assert_same(dyn, ref)
    g = torch.Generator().manual_seed(3)
    src = [torch.randn(2, 5, WIDTH, generator=g) for _ in ref.config.levels]
    tgt = [torch.randn(2, 5, WIDTH, generator=g) for _ in ref.config.levels]
    with torch.no_grad():
        a, b = dyn(src, tgt), ref(src, tgt)
    assert torch.equal(a.loss, b.loss)
    for sa, sb in zip(a.states, b.states, strict=True):
        assert torch.equal(sa.prediction, sb.prediction)


def test_midway_official_checkpoint_with_dynamics_and_export(tmp_path):
    path, (student, teacher, _, t_head, dyn) = official_midway(tmp_path / "midway_bdd_vits.pth")
    got = load_weights(path)
    assert got.info.format == "midway-official" and got.info.method == "midway"
    assert {"args", "dino_loss", "optimizer", "epoch"} <= set(got.info.ignored)
    assert_same(got.encoder, teacher)
    assert_same(got.head, t_head)
    assert got.dynamics.config.levels == [1, 2, 3] and got.dynamics.config.gate_bias == 2.0
    assert_same_dynamics(got.dynamics, dyn)
    assert_same(load_encoder(path, weights="student"), student)

    out = tmp_path / "midway.safetensors"
    config = export_model(path, out, include_dynamics=True)
    assert config["method"] == "midway" and config["dynamics"]["grid_size"] == [2, 2]
    back = load_exported(out)
    assert_same(back.encoder, teacher)
    assert_same_outputs(back.encoder, teacher, 32)
    assert_same_dynamics(back.dynamics, dyn)
    assert load_exported(out).info.format == "motionrep-export"


def test_midway_official_without_args_uses_recipe_defaults(tmp_path):
    path, (_, _, _, _, dyn) = official_midway(tmp_path / "m.pth", with_args=False)
    got = load_weights(path, dynamics_overrides={"gate_bias": 2.0})
    assert got.dynamics.config.levels == [1, 2, 3]  # evenly spaced over the encoder depth
    assert_same_dynamics(got.dynamics, dyn)


def test_midway_unknown_dynamics_key_is_named(tmp_path):
    path, _ = official_midway(tmp_path / "m.pth")
    ckpt = torch.load(path, weights_only=False)
    ckpt["motion_loss"]["module.motion_head.weight"] = torch.zeros(2)
    bad = save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"module\.motion_head\.weight"):
        load_weights(bad)
    assert load_encoder(bad).depth == 3  # the encoder alone neither builds nor checks the dynamics


# ------------------------------------------------------------------------------------------------ motionrep runs


def midway_run(tmp_path):
    cfg = load_config("midway-micro", ["train.device=cpu"])
    method = build_method(cfg)
    with torch.no_grad():
        for p in method.teacher_encoder.parameters():
            p.add_(0.5)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"step": 1, "method": method.state_dict(), "config": to_yaml(cfg)}, run / "checkpoints" / "last.pt")
    return run, method.eval()


def test_motionrep_run_export_roundtrip(tmp_path):
    run, method = midway_run(tmp_path)
    got = load_weights(run)
    assert got.info.format == "motionrep-checkpoint" and got.info.method == "midway" and got.info.weights == "teacher"
    assert_same(got.encoder, method.teacher_encoder)
    assert_same(got.head, method.dino.teacher_head)
    assert_same(got.dynamics, method.dynamics)
    assert_same(load_encoder(run / "checkpoints" / "last.pt", weights="student"), method.encoder)

    out = tmp_path / "exp" / "micro.safetensors"
    export_model(run, out, include_dynamics=True, weights="student")
    back = load_exported(out)
    assert back.info.weights == "student" and back.info.method == "midway"
    assert back.info.train_steps == got.info.train_steps == 8
    assert_same(back.encoder, method.encoder)
    assert_same_outputs(back.encoder, method.encoder, 32)
    assert_same(back.dynamics, method.dynamics)
    assert_same(load_encoder(out), method.encoder)  # the one entry point also reads exports
    plain = tmp_path / "enc.safetensors"
    assert export_model(run, plain)["dynamics"] is None and load_exported(plain).dynamics is None


# ------------------------------------------------------------------------------------------------------- errors


def test_missing_unknown_and_misshaped_keys_are_named(tmp_path):
    state = dino_vit().state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.1.norm1.weight"}
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.1\.norm1\.weight"):
        load_encoder(save(missing, tmp_path / "a.pth"))
    with pytest.raises(WeightsError, match=r"unexpected keys: blocks\.0\.attn\.extra\.weight"):
        load_encoder(save(state | {"blocks.0.attn.extra.weight": torch.zeros(3)}, tmp_path / "b.pth"))
    bad = state | {"norm.bias": torch.zeros(7)}
    with pytest.raises(WeightsError, match=r"norm\.bias \(file \(7,\), model \(192,\)\)"):
        load_encoder(save(bad, tmp_path / "c.pth"))


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = save({"cls_token": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refused to load .*(system|posix)"):
        load_encoder(path)
    assert not marker.exists()


def test_user_mistakes_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_encoder(tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="checkpoints/last.pt"):
        load_encoder(tmp_path)
    with pytest.raises(WeightsError, match="weights must be one of"):
        load_encoder(tmp_path, weights="ema")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_encoder(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="no ViT encoder"):
        load_encoder(save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth"))
    odd = dino_vit(embed_dim=96, num_heads=2).state_dict()
    with pytest.raises(WeightsError, match="pass num_heads"):
        load_encoder(save(odd, tmp_path / "odd.pth"))
    assert load_encoder(tmp_path / "odd.pth", num_heads=2).num_heads == 2
    with pytest.raises(WeightsError, match="no 'student'"):
        load_encoder(save({"teacher": dino_vit().state_dict()}, tmp_path / "t.pth"), weights="student")
    with pytest.raises(WeightsError, match="no Midway dynamics"):
        export_model(tmp_path / "t.pth", tmp_path / "o.safetensors", include_dynamics=True)
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        export_model(tmp_path / "odd.pth", tmp_path / "o.pt")
    with pytest.raises(WeightsError, match="not a motionrep export"):
        load_exported(tmp_path / "odd.pth")


def test_swiglu_mlp_is_refused_by_key_name(tmp_path):
    state = dino_vit().state_dict()
    swiglu = {re.sub(r"mlp\.fc1\.", "mlp.w12.", k): v for k, v in state.items()}
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.0\.mlp\.fc1\.bias.*unexpected keys: .*mlp\.w12"):
        load_encoder(save(swiglu, tmp_path / "g.pth"))


def test_half_precision_and_plain_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    ref = dinov2_vit(registers=4)
    half = {k: v.half() for k, v in ref.state_dict().items()}
    enc = load_encoder(save(half, tmp_path / "fp16.pth"))
    assert enc.pos_embed.dtype == torch.float32 and torch.equal(enc.pos_embed, half["pos_embed"].float())
    save_file({f"backbone.{k}": v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "b.safetensors")
    got = load_weights(tmp_path / "b.safetensors")
    assert got.info.format == "state-dict" and "backbone." in got.info.layout
    assert_same(got.encoder, ref)
