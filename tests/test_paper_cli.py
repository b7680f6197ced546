"""In-context data fractions and the ``motionrep paper-eval`` commands on the synthetic world (few-step smoke)."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.data.labeled import SegSet
from motionrep.eval.features import PixelFeatures
from motionrep.eval.paper.incontext_fractions import FractionConfig, fraction_indices, incontext_fractions
from motionrep.eval.paper.streams import SegSetItems

runner = CliRunner()
SYNTH = ["vit-micro", "--random-init", "--dataset", "synth", "--preset", "tiny", "--device", "cpu"]


def test_fraction_subsets_are_fixed_and_sized():
    a = fraction_indices(1000, 128, 42)
    assert len(a) == math.ceil(1000 / 128) and torch.equal(a, fraction_indices(1000, 128, 42))
    assert torch.equal(a, a.sort().values) and not torch.equal(a, fraction_indices(1000, 128, 400))
    assert torch.equal(fraction_indices(10, 1, 3), torch.arange(10)) and len(fraction_indices(3, 128, 0)) == 1


def test_fraction_runs_are_recorded():
    labels = torch.zeros(16, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = (torch.arange(16) % 2 + 1)[:, None, None]
    colours = torch.tensor([[200, 20, 20], [20, 200, 20], [20, 20, 200]], dtype=torch.uint8)
    images = colours[labels].permute(0, 3, 1, 2).contiguous()  # distinct directions survive L2 normalisation
    data = SegSetItems(SegSet(images, labels, ["bg", "a", "b"]))
    cfg = FractionConfig((8, 1), (1, 2, 3), size=16, memory_size=200, k=3)
    out = incontext_fractions(PixelFeatures(8), data, data, cfg)
    assert [(r["fraction"], r["seed"], r["images"]) for r in out["runs"]] == [
        ("1/8", 1, 2), ("1/8", 2, 2), ("1/8", 3, 2), ("1/1", 1, 16)
    ]  # fmt: skip
    assert out["settings"]["memory_size"] == 200 and out["runs"][-1]["memory_rows"] <= 200
    assert out["runs"][-1]["miou"] == pytest.approx(100.0)  # colours identify the classes
    values = [r["miou"] for r in out["runs"][:3]]
    assert out["summary"]["1/8"]["miou_mean"] == pytest.approx(sum(values) / 3)
    with pytest.raises(ValueError, match="denominators"):
        FractionConfig((0,))
    with pytest.raises(ValueError, match="matching"):
        FractionConfig(matching="many_to_one")


def _run(tmp_path, *args):
    result = runner.invoke(app, ["paper-eval", *args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    return result


def test_cli_protocols_on_the_synthetic_world(tmp_path):
    small = ["--train-videos", "2", "--eval-videos", "1", "--workers", "0"]
    seg = ["--steps", "2", "--batch-size", "2", "--crop", "32", "--stride", "16", "--short-side", "32", "--width", "16"]
    _run(tmp_path, "seg-linear", *SYNTH, *small, *seg)
    _run(tmp_path, "seg-upernet", *SYNTH, *small, *seg, "--finetune")
    _run(tmp_path, "video-cluster", *SYNTH, "--eval-videos", "1", "--workers", "0", "--size", "32", "--res", "16",
         "--eval-res", "8", "--max-frames", "3")  # fmt: skip
    _run(tmp_path, "unsup-seg", *SYNTH, "--eval-videos", "1", "--workers", "0", "--size", "32", "--k", "8")
    _run(tmp_path, "incontext", *SYNTH, "--train-videos", "2", "--eval-videos", "1", "--size", "32", "--fractions",
         "8,1", "--seeds", "1", "--memory-size", "300", "--batch-size", "2", "--workers", "0")  # fmt: skip
    flow = ["vit-micro", "--random-init", "--train", "synth", "--preset", "tiny", "--device", "cpu", *small]
    _run(tmp_path, "flow-finetune", *flow, "--steps", "2", "--batch-size", "2", "--crop", "32,32", "--width", "16",
         "--warmup", "1")  # fmt: skip
    names = ["seg-linear", "seg-upernet-finetune", "video-cluster", "unsup-seg", "incontext", "flow-finetune"]
    for name in names:
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["protocol"] == name and record["model"] == "random" and record["settings"]
    settings = json.loads((tmp_path / "incontext.json").read_text())["settings"]
    assert settings["batch_size"] == 2 and settings["workers"] == 0
    assert set(json.loads((tmp_path / "video-cluster.json").read_text())["metrics"]) == {"miou_F", "miou_C", "miou_D"}
    assert "synth.epe" in json.loads((tmp_path / "flow-finetune.json").read_text())["metrics"]


def test_cli_user_errors(tmp_path):
    result = runner.invoke(app, ["paper-eval", "seg-linear", "vit-micro", "--random-init", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs --data" in result.output
    result = runner.invoke(
        app, ["paper-eval", "unsup-seg", "vit-micro", "--random-init", "--data", str(tmp_path), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "voc" in result.output
    result = runner.invoke(app, ["paper-eval", "video-cluster", "vit-micro", "--random-init", "--dataset", "kinetics",
                                 "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "davis, ytvos or synth" in result.output


@pytest.fixture(scope="module")
def midway_run(tmp_path_factory):
    """An untrained midway-micro run directory (config.yaml + checkpoints/last.pt)."""
    from motionrep.config import load_config, save_config, to_yaml
    from motionrep.train.checkpoint import atomic_save
    from motionrep.train.engine import build_method

    root = tmp_path_factory.mktemp("runs") / "midway"
    cfg = load_config("midway-micro", [])
    method = build_method(cfg)
    root.mkdir()
    save_config(cfg, root / "config.yaml")
    atomic_save({"step": 0, "method": method.state_dict(), "config": to_yaml(cfg)}, root / "checkpoints" / "last.pt")
    return root, method


def test_midway_run_backward_readout_and_pretrained_dynamics(midway_run, tmp_path):
    from motionrep.commands.paper_eval import _is_midway, _midway

    root, method = midway_run
    name, encoder, dynamics = _midway(f"mw={root}", "cpu")
    assert name == "mw" and _is_midway(str(root)) and not _is_midway("vit-micro")
    for key, value in method.dynamics.state_dict().items():
        assert torch.equal(dynamics.state_dict()[key], value)
    small = ["--dataset", "synth", "--preset", "tiny", "--device", "cpu", "--train-videos", "2", "--eval-videos", "1"]
    seg = [
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--crop",
        "32",
        "--stride",
        "16",
        "--short-side",
        "32",
        "--workers",
        "0",
    ]
    _run(tmp_path, "seg-linear", str(root), *small, *seg, "--features", "backward")
    record = json.loads((tmp_path / "seg-linear.json").read_text())
    assert record["settings"]["features"] == "backward" and record["settings"]["levels"] == [1]
    flow = ["--train", "synth", "--preset", "tiny", "--device", "cpu", "--train-videos", "2", "--eval-videos", "1"]
    _run(tmp_path, "flow-finetune", str(root), *flow, "--steps", "1", "--batch-size", "2", "--crop", "32,32",
         "--width", "16", "--workers", "0", "--warmup", "1")  # fmt: skip
    assert json.loads((tmp_path / "flow-finetune.json").read_text())["settings"]["pretrained_dynamics"] is True
