"""The end-to-end demo: a micro-budget run through the CLI (files, metrics keys, headline), the fairness of the demo
presets, the headline verdict, and re-runs into an occupied folder."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import config_diff, save_config
from motionrep.demo import BUDGETS, DemoError, demo_configs, headline, prepare_out_dir, pretrain

MODELS = {"midway", "dino", "random"}


def test_demo_micro_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--budget", "micro", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "mIoU (%)" in res.output and "EPE (px)" in res.output and f"report: {out / 'report.html'}" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == MODELS
    for values in metrics.values():
        assert {"seg_linear.miou", "flow_probe.epe", "tracking.delta_avg"} <= set(values)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["seed"] == 3 and set(summary["headline"]) == MODELS and summary["zero_flow_epe"] >= 0
    assert "predicting zero flow" in res.output
    assert set(summary["seconds"]) == {"world", "pretrain_midway", "pretrain_dino", "evaluate"}
    report = (out / "report.html").read_text()
    assert "Demo headline" in report and "<title>motionrep demo</title>" in report
    for name in ("midway", "dino"):
        assert (out / "runs" / name / "checkpoints" / "last.pt").is_file()
    manifest = json.loads((out / "world" / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["videos"]) == BUDGETS["micro"].train_videos

    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--budget", "micro"])
    assert again.exit_code == 2 and "--resume" in again.output and "Traceback" not in again.output


def test_demo_presets_share_everything_but_the_method():
    cfgs = demo_configs(BUDGETS["quick"], seed=5)
    assert {k.split(".")[0] for k in config_diff(cfgs["midway"], cfgs["dino"])} == {"method"}
    for cfg in cfgs.values():
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seed, cfg.data.synth_seed) == (100, 8, 5, 5)
        assert cfg.data.synth_videos == BUDGETS["quick"].train_videos
    full = demo_configs(BUDGETS["full"])
    assert full["midway"].method.midway.latent_dynamics and full["dino"].method.name == "dino"
    with pytest.raises(DemoError, match="seed"):
        demo_configs(BUDGETS["micro"], seed=-1)


def _metrics(midway, dino, random):
    return {
        m: {"seg_linear.miou": miou, "flow_probe.epe": epe}
        for m, (miou, epe) in {"midway": midway, "dino": dino, "random": random}.items()
    }


@pytest.mark.parametrize(
    ("midway", "dino", "random", "holds"),
    [
        ((50.0, 1.0), (50.0, 1.5), (30.0, 2.0), True),  # ties on mIoU count as "at least as good"
        ((49.9, 1.0), (50.0, 1.5), (30.0, 2.0), False),  # worse recognition than DINO
        ((60.0, 2.0), (50.0, 1.5), (30.0, 2.5), False),  # not the best EPE
        ((60.0, 1.0), (50.0, 1.5), (30.0, 1.0), False),  # EPE tie with random is not "better"
        ((60.0, None), (50.0, 1.5), (30.0, 2.0), False),  # a missing metric never passes
    ],
)
def test_headline_verdict(midway, dino, random, holds):
    rows, ok = headline(_metrics(midway, dino, random))
    assert ok is holds
    assert rows["dino"] == {"mIoU (%)": dino[0], "EPE (px)": dino[1]}


def test_occupied_folder_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "demo"
    (out / "runs" / "midway").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="--overwrite"):
        prepare_out_dir(out, resume=False, overwrite=False)
    with pytest.raises(DemoError, match="one of"):
        prepare_out_dir(out, resume=True, overwrite=True)
    prepare_out_dir(out, resume=True, overwrite=False)
    assert (out / "metrics.json").exists()  # resume keeps everything
    prepare_out_dir(out, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the demo's own outputs are deleted
    (tmp_path / "file").write_text("")
    with pytest.raises(DemoError, match="not a folder"):
        prepare_out_dir(tmp_path / "file", resume=False, overwrite=False)


def test_resume_keeps_finished_runs_and_refuses_other_settings(tmp_path):
    cfg = demo_configs(BUDGETS["micro"])["dino"]
    run = tmp_path / "dino"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": cfg.train.steps}, run / "checkpoints" / "last.pt")
    save_config(cfg, run / "config.yaml")
    before = sorted(p.name for p in run.rglob("*"))
    pretrain(cfg, run, resume=True)  # finished with the same settings: nothing to do
    assert sorted(p.name for p in run.rglob("*")) == before
    other = demo_configs(BUDGETS["micro"], seed=1)["dino"]
    with pytest.raises(DemoError, match="train.seed"):
        pretrain(other, run, resume=True)
