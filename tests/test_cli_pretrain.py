"""CLI smoke tests of ``motionrep pretrain`` with the micro preset on the synthetic world."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import load_config
from motionrep.train.logging import read_metrics

runner = CliRunner()


def test_pretrain_micro_and_exact_resume(tmp_path):
    run, args = tmp_path / "run", ["pretrain", "micro", "train.device=cpu"]
    result = runner.invoke(app, [*args, "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "done: step 3" in result.output
    records = read_metrics(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.pt", "step_00000002.pt", "step_00000004.pt"]
    assert load_config(run / "config.yaml") == load_config("micro", ["train.device=cpu"])
    again = runner.invoke(app, [*args, "--out", str(run)])
    assert again.exit_code == 1 and "--resume" in again.output and "Traceback" not in again.output

    # as if the run had died after its step-2 checkpoint: resuming reproduces steps 2 and 3 exactly
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.copy(cut / "checkpoints" / "step_00000002.pt", cut / "checkpoints" / "last.pt")
    resumed = runner.invoke(app, [*args, "--out", str(cut), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert [(r["step"], r["loss"]) for r in read_metrics(cut)] == [(r["step"], r["loss"]) for r in records]


def test_dry_run_prints_config_and_param_counts(tmp_path):
    result = runner.invoke(
        app, ["pretrain", "micro", "data.source=bdd100k", f"data.root={tmp_path / 'absent'}", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    sizes = json.loads(lines[-1])["params"]
    assert set(sizes) == {"encoder", "teacher_encoder", "dino"} and sizes["encoder"] > 0
    assert "warning: cannot build the training data" in result.output and "source: bdd100k" in result.output
    assert not any(tmp_path.iterdir())


def test_user_errors_are_clean(tmp_path):
    bad_key = runner.invoke(app, ["pretrain", "micro", "train.stepz=3", "--out", str(tmp_path / "a")])
    assert bad_key.exit_code == 2 and "Valid keys of 'train'" in bad_key.output
    assert "Traceback" not in bad_key.output
    bad_model = runner.invoke(app, ["pretrain", "micro", "model.name=vit-nope", "--dry-run"])
    assert bad_model.exit_code == 2 and "unknown ViT preset" in bad_model.output
    no_out = runner.invoke(app, ["pretrain", "micro"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    missing = runner.invoke(
        app, ["pretrain", "micro", "data.source=bdd100k", f"data.root={tmp_path / 'absent'}", "--out", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "cannot build the training data" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "config.yaml").exists()
    too_few = runner.invoke(app, ["pretrain", "micro", "data.synth_videos=1", "--out", str(tmp_path / "few")])
    assert too_few.exit_code == 1 and "fewer than one batch" in too_few.output and "Traceback" not in too_few.output
    if importlib.util.find_spec("tensorboard") is None:
        tb = runner.invoke(app, ["pretrain", "micro", "train.tensorboard=true", "--out", str(tmp_path / "tb")])
        assert tb.exit_code == 1 and "motionrep[tensorboard]" in tb.output and not (tmp_path / "tb").exists()
    if not torch.cuda.is_available():
        cuda = runner.invoke(app, ["pretrain", "micro", "train.device=cuda", "--out", str(tmp_path / "c")])
        assert cuda.exit_code == 1 and "CUDA is not available" in cuda.output
