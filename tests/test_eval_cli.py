"""``motionrep eval`` end to end on tiny synthetic data, and run-directory loading."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.config import load_config, to_yaml
from motionrep.eval.suite import EvalError, load_encoder
from motionrep.methods import get_method

FAST = [
    "--threads",
    "1",
    "--preset",
    "tiny",
    "--train-videos",
    "2",
    "--eval-videos",
    "1",
    "--seg-steps",
    "3",
    "--flow-steps",
    "3",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory in the training engine's layout, written from a real method's state dict."""
    cfg = load_config("micro")
    torch.manual_seed(0)
    method = get_method(cfg.method.name)(cfg)
    with torch.no_grad():
        for p in method.teacher_encoder.parameters():
            p.add_(0.5)  # teacher differs from student
    run = tmp_path_factory.mktemp("runs") / "mini"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"step": 4, "method": method.state_dict(), "config": to_yaml(cfg)}, run / "checkpoints" / "last.pt")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s}) + "\n" for s in range(1, 5)))
    return run, method


def test_load_encoder_takes_the_teacher_by_default(run_dir):
    run, method = run_dir
    model = load_encoder(run)
    assert model.name == "mini" and model.train_steps == 4 and model.run_dir == run
    for k, v in method.teacher_encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v)
    student = load_encoder(run / "checkpoints" / "last.pt", weights="student")
    assert torch.equal(student.encoder.pos_embed, method.encoder.pos_embed)


def test_load_encoder_errors(tmp_path, run_dir):
    with pytest.raises(EvalError, match="without checkpoints/last.pt"):
        load_encoder(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EvalError, match="cannot read"):
        load_encoder(bad)
    run, method = run_dir
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["method"] = {k: v for k, v in state["method"].items() if k != "teacher_encoder.pos_embed"}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(EvalError, match="pos_embed"):
        load_encoder(tmp_path / "partial.pt")


def test_eval_command_writes_metrics_figures_and_report(run_dir, tmp_path):
    run, _ = run_dir
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(run), *FAST, "--baselines", "pixels,dis", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["mini", "pixels", "dis"]
    expected = {
        "seg_linear.miou", "seg_linear.acc", "overcluster.miou", "overcluster.miou_k27", "incontext.miou",
        "propagation.jf", "flow_probe.epe", "flow_probe.px1", "flow_match.epe", "tracking.delta_avg",
        "tracking.occlusion_accuracy",
    }  # fmt: skip
    assert expected <= set(metrics["mini"])
    assert all(k.split(".")[0] in ("seg_linear", "overcluster", "incontext", "propagation") for k in metrics["pixels"])
    assert set(metrics["dis"]) == {f"{p}.{m}" for p in ("dis", "zero_flow") for m in ("epe", "px1", "px3", "px5")}
    assert 0 <= metrics["mini"]["seg_linear.miou"] <= 100 and metrics["mini"]["flow_probe.epe"] >= 0
    html = (out / "report.html").read_text()
    assert "<table>" in html and "mini" in html and "figures/mini_curves.png" in html
    for name in ("mini_segmentation.png", "mini_flow.png", "mini_curves.png", "dis_flow.png"):
        assert (out / "figures" / name).is_file()
    assert "report:" in result.output


def test_midway_run_adds_the_dynamics_probes(tmp_path):
    cfg = load_config("midway-micro")
    method = get_method(cfg.method.name)(cfg)
    run = tmp_path / "midway"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1, "method": method.state_dict(), "config": to_yaml(cfg)}, run / "checkpoints" / "last.pt")
    out = tmp_path / "out"
    args = ["eval", str(run), *FAST, "--protocols", "seg_linear,flow_probe", "--baselines", "none", "--no-figures"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())["midway"]
    expected = {"flow_probe.epe", "flow_probe_dynamics.epe", "flow_probe_dynamics.px1", "seg_linear_backward.miou"}
    assert expected <= set(metrics)


def test_eval_random_init_and_supervised_baseline(tmp_path):
    out = tmp_path / "out"
    args = ["eval", "vit-micro", "--random-init", *FAST, "--protocols", "seg_linear", "--baselines", "supervised"]
    args += ["--frame-step", "2"]
    result = CliRunner().invoke(app, [*args, "--supervised-steps", "2", "--no-figures", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["random", "supervised"]
    assert set(metrics["random"]) == {"seg_linear.miou", "seg_linear.acc"}


@pytest.mark.parametrize(
    "args,message",
    [
        (["/does/not/exist"], "not found"),
        (["vit-micro", "--random-init", "--protocols", "nope"], "unknown protocol"),
        (["vit-micro", "--random-init", "--suite", "voc"], "needs --data"),
        (["vit-micro", "--random-init", "--weights", "ema"], "--weights"),
        (["vit-micro", "--random-init", "--frame-step", "0"], "frame step"),
    ],
)
def test_eval_command_reports_user_errors(tmp_path, args, message):
    result = CliRunner().invoke(app, ["eval", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_eval_reads_a_synth_folder(tmp_path):
    from motionrep.data.synth import SynthWorld, synth_preset, write_split
    from motionrep.eval.suite import synth_data

    config = synth_preset("tiny")
    for split, n in (("train", 2), ("val", 1)):
        write_split(SynthWorld(config, split, 0, n), tmp_path / "world", progress=False)
    from_disk = synth_data(data_dir=tmp_path / "world", train_videos=2, eval_videos=1)
    in_memory = synth_data("tiny", train_videos=2, eval_videos=1)
    assert torch.equal(from_disk.seg_val.labels, in_memory.seg_val.labels)
    assert torch.equal(from_disk.flow_val.image2, in_memory.flow_val.image2)
    assert torch.allclose(from_disk.flow_val.flow, in_memory.flow_val.flow)
    result = CliRunner().invoke(
        app, ["eval", "--data", str(tmp_path / "world"), "--baselines", "dis", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "dis.epe" in json.loads((tmp_path / "o" / "metrics.json").read_text())["dis"]


def test_gap_flow_matches_chained_one_frame_flows():
    from scipy.ndimage import map_coordinates

    from motionrep.data.synth import SynthWorld, synth_preset
    from motionrep.eval.suite import gap_flow

    video = SynthWorld(synth_preset("tiny"), "val", 0, 1)[0]
    flow2, valid2 = gap_flow(video, 1, 2)
    f1, f2 = video.flow[1], video.flow[2]
    h, w = f1.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    at = [ys + f1[1], xs + f1[0]]  # where each pixel of frame 1 lands in frame 2 (row, col)
    chained = f1 + np.stack([map_coordinates(f2[c], at, order=1, mode="nearest") for c in range(2)])
    keep = valid2 & video.valid[1]
    assert keep.mean() > 0.5
    err = np.linalg.norm(flow2 - chained, axis=0)[keep]
    assert np.median(err) < 0.05 and np.percentile(err, 90) < 0.5
    assert np.array_equal(gap_flow(video, 1, 1)[0], video.flow[1])
