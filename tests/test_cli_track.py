import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from motionrep.cli import app
from motionrep.data.synth import SynthConfig, SynthWorld, write_split
from motionrep.tracking.base import get_tracker, grid_queries, load_tracks

runner = CliRunner()
CFG = SynthConfig(size=32, frames=6, track_grid=4, videos={"train": 1, "val": 1, "test": 1})


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_split(SynthWorld(CFG, "val", 0), root, fmt="frames", progress=False)
    write_split(SynthWorld(CFG, "test", 0), root, fmt="mp4", progress=False)
    return root


def _ok(args):
    result = runner.invoke(app, ["track", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def _fails(args, message):
    result = runner.invoke(app, ["track", *map(str, args)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    return result


def test_dis_on_frame_folder_with_figure(tmp_path, synth_dir):
    out, fig = tmp_path / "t.npz", tmp_path / "t.png"
    result = _ok([synth_dir / "val/frames/val_00000", "--tracker", "dis", "--grid", "4", "--out", out, "--figure", fig])
    tracks, visible = load_tracks(out)
    assert tracks.shape == (6, 16, 2) and visible.shape == (6, 16)
    assert np.array_equal(tracks[0], grid_queries(4, 32, 32))
    assert "point·frames/s" in result.output
    with Image.open(fig) as im:
        assert im.format == "PNG" and im.width > 100


def test_gt_on_synth_frames_equals_generator(tmp_path, synth_dir):
    out = tmp_path / "gt.npz"
    _ok([synth_dir / "val/frames/val_00000", "--tracker", "gt", "--grid", "3", "--out", out, "--step", "2"])
    tracks, visible = load_tracks(out)
    video = SynthWorld(CFG, "val", 0)[0]
    expected, exp_visible = video.track(grid_queries(3, 32, 32))
    assert tracks.shape == (3, 9, 2)
    np.testing.assert_allclose(tracks, expected[::2], atol=1e-5)
    assert np.array_equal(visible[1:], exp_visible[2::2])


def test_lk_on_mp4_and_gt_on_synth_mp4(tmp_path, synth_dir):
    video = synth_dir / "test/videos/test_00000.mp4"
    _ok([video, "--tracker", "lk", "--grid", "2", "--max-frames", "4", "--out", tmp_path / "lk.npz"])
    assert load_tracks(tmp_path / "lk.npz")[0].shape == (4, 4, 2)
    _ok([video, "--tracker", "gt", "--grid", "2", "--out", tmp_path / "gt.npz"])
    assert load_tracks(tmp_path / "gt.npz")[0].shape == (6, 4, 2)


def test_step_chains_over_raw_frames_by_default(tmp_path, synth_dir):
    folder = synth_dir / "val/frames/val_00000"
    frames = SynthWorld(CFG, "val", 0)[0].frames
    queries = grid_queries(3, 32, 32)
    _ok([folder, "--tracker", "lk", "--grid", "3", "--step", "2", "--out", tmp_path / "all.npz"])
    _ok([folder, "--tracker", "lk", "--grid", "3", "--step", "2", "--chain", "sampled", "--out", tmp_path / "s.npz"])
    every, _ = get_tracker("lk")(frames, queries)
    sampled, _ = get_tracker("lk")(frames[::2], queries)
    np.testing.assert_allclose(load_tracks(tmp_path / "all.npz")[0], every[::2], atol=1e-4)
    np.testing.assert_allclose(load_tracks(tmp_path / "s.npz")[0], sampled, atol=1e-4)


def test_plain_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for t in range(3):
        Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / f"img_{t}.png")
    _ok([tmp_path, "--tracker", "lk", "--grid", "2", "--out", tmp_path / "o.npz"])
    assert load_tracks(tmp_path / "o.npz")[0].shape == (3, 4, 2)


def test_clean_errors(tmp_path, synth_dir):
    frames = synth_dir / "val/frames/val_00000"
    out = tmp_path / "x.npz"
    _fails([tmp_path / "missing.mp4", "--out", out], "no such video")
    _fails([frames, "--tracker", "raft", "--out", out], "unknown tracker")
    _fails([frames, "--out", tmp_path / "x.txt"], ".npz")
    _fails([frames, "--grid", "0", "--out", out], ">= 1")
    _fails([frames, "--chain", "some", "--out", out], "--chain")
    _fails([frames, "--tracker", "cotracker", "--out", out], "local checkpoint")
    _fails([frames, "--tracker", "cotracker", "--checkpoint", tmp_path / "none.pth", "--out", out], "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails([empty, "--out", out], "no jpg/png frames")
    _fails([empty, "--tracker", "gt", "--out", out], "motionrep synth")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    _fails([tmp_path / "bad.mp4", "--out", out], "bad.mp4")
    assert not out.exists()
