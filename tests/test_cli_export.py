"""CLI smoke tests of ``motionrep export`` on a micro Midway run, a DINO run and an official DINO backbone."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import load_config, to_yaml
from motionrep.models.vit import VisionTransformer
from motionrep.models.weights import load_encoder, load_exported
from motionrep.train.engine import build_method

runner = CliRunner()


def make_run(tmp_path, preset: str):
    """A run directory in the layout of ``motionrep pretrain`` (config.yaml, checkpoints/last.pt)."""
    cfg = load_config(preset, ["train.device=cpu"])
    method = build_method(cfg).eval()
    run = tmp_path / preset
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"step": 1, "method": method.state_dict(), "config": to_yaml(cfg)}, run / "checkpoints" / "last.pt")
    return run, method


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_midway_run_with_dynamics(tmp_path):
    run, method = make_run(tmp_path, "midway-micro")
    out = tmp_path / "midway.safetensors"
    result = runner.invoke(app, ["export", str(run), "--out", str(out), "--dynamics", "--weights", "student"])
    assert result.exit_code == 0, result.output
    assert "encoder + dynamics" in result.output and "method midway" in result.output
    back = load_exported(out)
    assert same(back.encoder, method.encoder) and same(back.dynamics, method.dynamics)
    teacher = tmp_path / "teacher.safetensors"
    assert runner.invoke(app, ["export", str(run), "--out", str(teacher)]).exit_code == 0
    assert same(load_encoder(teacher), method.teacher_encoder)


def test_export_official_backbone(tmp_path):
    ref = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3).eval()
    src = tmp_path / "dino.pth"
    torch.save({f"module.backbone.{k}": v for k, v in ref.state_dict().items()}, src)
    out = tmp_path / "dino.safetensors"
    result = runner.invoke(app, ["export", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "state-dict" in result.output and "width 192, depth 2, 3 heads, patch 16" in result.output
    assert same(load_encoder(out), ref)


def test_export_user_errors_are_clean(tmp_path):
    run, _ = make_run(tmp_path, "dino-synth-tiny")
    cases = [
        (["export", str(run), "--out", str(tmp_path / "x.safetensors"), "--dynamics"], "no Midway dynamics"),
        (["export", str(tmp_path / "absent"), "--out", str(tmp_path / "x.safetensors")], "not found"),
        (["export", str(run), "--out", str(tmp_path / "x.pt")], ".safetensors"),
        (["export", str(run), "--out", str(tmp_path / "x.safetensors"), "--weights", "ema"], "weights must be"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, args
    assert not (tmp_path / "x.safetensors").exists()
