"""CLI smoke tests of ``motionrep pretrain`` with the micro preset on the synthetic world."""

from __future__ import annotations

import importlib.util
import json
import math

from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import load_config
from motionrep.train.logging import read_metrics

runner = CliRunner()


def test_pretrain_micro_few_steps(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", "micro", "train.steps=2", "train.device=cpu", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "done: step 1" in result.output
    records = read_metrics(run)
    assert [r["step"] for r in records] == [0, 1] and all(math.isfinite(r["loss"]) for r in records)
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "step_00000002.pt").is_file()
    assert load_config(run / "config.yaml") == load_config("micro", ["train.steps=2", "train.device=cpu"])
    again = runner.invoke(app, ["pretrain", "micro", "train.steps=2", "train.device=cpu", "--out", str(run)])
    assert again.exit_code == 1 and "--resume" in again.output and "Traceback" not in again.output
    resumed = runner.invoke(
        app, ["pretrain", "micro", "train.steps=2", "train.device=cpu", "--out", str(run), "--resume"]
    )
    assert resumed.exit_code == 0 and len(read_metrics(run)) == 2


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
    no_out = runner.invoke(app, ["pretrain", "micro"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    missing = runner.invoke(
        app, ["pretrain", "micro", "data.source=bdd100k", f"data.root={tmp_path / 'absent'}", "--out", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "cannot build the training data" in missing.output
    assert "Traceback" not in missing.output and not (tmp_path / "config.yaml").exists()
    if importlib.util.find_spec("tensorboard") is None:
        tb = runner.invoke(app, ["pretrain", "micro", "train.tensorboard=true", "--out", str(tmp_path / "tb")])
        assert tb.exit_code == 1 and "motionrep[tensorboard]" in tb.output and not (tmp_path / "tb").exists()
