"""``motionrep analyze perturb`` on tiny synthetic clips: outputs, a constructed identity model, and clean errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import load_config, save_config, to_yaml
from motionrep.train.checkpoint import atomic_save
from motionrep.train.engine import build_method

RUNNER = CliRunner()


def write_run(root, preset: str, overrides: list[str], identity: bool = False):
    """A run directory (config.yaml + checkpoints/last.pt) of an untrained model, without training."""
    cfg = load_config(preset, overrides)
    method = build_method(cfg)
    if identity:  # residual branches of every predictor off: the forward prediction is the source itself
        for predictor in method.dynamics.forward_predictors:
            for block in predictor.blocks:
                for linear in (block.attn.proj, block.mlp.fc2):
                    torch.nn.init.zeros_(linear.weight)
                    torch.nn.init.zeros_(linear.bias)
    root.mkdir()
    save_config(cfg, root / "config.yaml")
    atomic_save({"step": 0, "method": method.state_dict(), "config": to_yaml(cfg)}, root / "checkpoints" / "last.pt")
    return root


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory):
    overrides = ["method.midway.backward=false", "method.midway.gating=false"]
    return write_run(tmp_path_factory.mktemp("runs") / "identity", "midway-micro", overrides, identity=True)


def test_perturb_writes_metrics_and_figures(identity_run, tmp_path):
    out = tmp_path / "out"
    args = ["analyze", "perturb", str(identity_run), "--out", str(out), "--videos", "2", "--samples", "2"]
    result = RUNNER.invoke(app, [*args, "--figures", "1", "--gap", "7"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["level"] == 3 and metrics["pairs"] == 2  # 2 clips of 8 frames, frames 0 and 7
    # An identity predictor sends every perturbation back to its own token: right exactly where nothing moved.
    assert metrics["peak_identity"] == 1.0
    assert 0.0 < metrics["moved_fraction"] < 1.0
    assert metrics["peak_exact_moved"] == 0.0
    assert metrics["peak_exact"] == pytest.approx(1.0 - metrics["moved_fraction"])
    for key in ("track_top1_acc", "track_topk_sim_acc", "track_nn_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert sorted(p.name for p in out.glob("*.png")) == ["heatmaps_val_00000.png", "tracks_val_00000.png"]


def test_perturb_from_a_checkpoint_file_and_backward_site(identity_run, tmp_path):
    ckpt = identity_run / "checkpoints" / "last.pt"
    args = ["analyze", "perturb", str(ckpt), "--out", str(tmp_path), "--videos", "1", "--samples", "1"]
    result = RUNNER.invoke(app, [*args, "--site", "backward", "--level", "1", "--figures", "0", "--gap", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["level"] == 1 and metrics["site"] == "backward" and metrics["pairs"] == 3
    assert metrics["moved_fraction"] == 0.0 and metrics["peak_exact_moved"] is None  # 2-frame steps: < 1/2 token


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--level", "4"], "not an objective level"),
        (["--site", "pixels"], "perturb.site"),
        (["--gap", "0"], "--gap"),
    ],
)
def test_perturb_option_errors(identity_run, tmp_path, extra, message):
    result = RUNNER.invoke(app, ["analyze", "perturb", str(identity_run), "--out", str(tmp_path), *extra])
    assert result.exit_code != 0 and message in result.output


def test_perturb_rejects_runs_without_dynamics(tmp_path):
    run = write_run(tmp_path / "dino", "micro", [])
    result = RUNNER.invoke(app, ["analyze", "perturb", str(run), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "needs a Midway run" in result.output
    result = RUNNER.invoke(app, ["analyze", "perturb", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no such run directory" in result.output
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    result = RUNNER.invoke(app, ["analyze", "perturb", str(tmp_path / "other.pt"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not a motionrep training checkpoint" in result.output
