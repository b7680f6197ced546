"""Pair and clip datasets, bad-input handling, and the loader (workers, resume, distributed sharding)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed import run_ranks
from motionrep.data.batch import ClipBatch, PairBatch
from motionrep.data.catalog import DatasetLayoutError, synthetic, video_folder
from motionrep.data.datasets import ClipDataset, PairDataset
from motionrep.data.loader import ResumableSampler, build_loader
from motionrep.data.photometric import PhotometricConfig
from motionrep.data.sampling import ClipSampler, PairSampler
from motionrep.data.sources import write_video
from motionrep.data.views import ClipViewsConfig, PairViewsConfig, transform_from_tensor
from motionrep.ops.points import grid_points, inside, pixel_to_grid

H, W, T = 48, 64, 12
VIEWS = PairViewsConfig(
    motion_size=32, motion_scale=(0.4, 1.0), init_scale=(0.25, 1.0), global_size=32, local_size=16, n_local=2
)


def pattern(x: np.ndarray, y: np.ndarray, phase: float) -> np.ndarray:
    """A smooth colour texture (so resampling differences stay small)."""
    return np.stack(
        [
            0.5 + 0.4 * np.sin(x / 5.0 + phase) * np.cos(y / 7.0),
            0.5 + 0.4 * np.cos(x / 6.0 - y / 9.0 + phase),
            0.5 + 0.4 * np.sin((x + y) / 8.0),
        ],
        axis=-1,
    )


class TranslatingVideo:
    """Texture translating by ``d`` px per frame; ``track`` is exact (the synthetic world's interface)."""

    def __init__(self, index: int, d=(1.25, -0.5)):
        self.d = np.asarray(d, np.float32)
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
        t = np.arange(T, dtype=np.float32)[:, None, None]
        frames = pattern(xs - t * self.d[0], ys - t * self.d[1], phase=float(index))
        self.frames = np.round(frames * 255).astype(np.uint8)

    def track(self, xy0: np.ndarray, t0: int = 0):
        tracks = xy0[None] + (np.arange(T)[:, None, None] - t0) * self.d
        return tracks.astype(np.float32), inside(torch.from_numpy(tracks), (W, H)).numpy()


class World:
    def __init__(self, n: int = 6):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> TranslatingVideo:
        return TranslatingVideo(i)


def pair_dataset(n: int = 6, photometric: bool = True, repeats: int = 2, seed: int = 0) -> PairDataset:
    views = PairViewsConfig(**{**VIEWS.__dict__, "photometric": photometric})
    return PairDataset(synthetic(World(n)), PairSampler((1, 3), repeats=repeats), views, seed=seed)


def resample(frame: np.ndarray, tf_row: torch.Tensor, size: int) -> torch.Tensor:
    """Render a view independently of views.py: bilinear sampling of the frame at the view's pixel centres."""
    tf = transform_from_tensor(tf_row)
    grid = tf.sampling_grid((size, size), (H, W))
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    return F.grid_sample(image, grid, mode="bilinear", align_corners=False, padding_mode="border")[0]


def test_pair_batch_shapes_and_determinism():
    ds = pair_dataset()
    item = ds[(0, 1)]
    assert isinstance(item, PairBatch) and len(item) == 2
    assert item.motion.shape == (2, 2, 3, 32, 32) and item.globals.shape == (2, 2, 2, 3, 32, 32)
    assert item.locals.shape == (2, 2, 2, 3, 16, 16) and item.locals_tf.shape == (2, 2, 2, 4)
    assert item.motion.dtype == torch.float32 and item.motion.min() >= 0 and item.motion.max() <= 1
    gap = item.frames[:, 1] - item.frames[:, 0]
    assert ((gap >= 1) & (gap <= 3)).all() and item.video.tolist() == [1, 1]
    again = ds[(0, 1)]
    assert torch.equal(item.motion, again.motion) and torch.equal(item.locals, again.locals)
    assert not torch.equal(item.motion, ds[(1, 1)].motion)  # another epoch, other draws
    batch = ds.collate([item, ds[(0, 2)]])
    assert batch.motion.shape[0] == 4 and batch.video.tolist() == [1, 1, 2, 2]


def test_pair_views_agree_with_their_transforms():
    ds = pair_dataset(photometric=False)
    item = ds[(0, 3)]
    frames = World()[3].frames
    for p in range(2):
        t = item.frames[p].tolist()
        assert torch.equal(item.motion_tf[p, 0], item.motion_tf[p, 1]) and (item.motion_tf[p, :, 0] > 0).all()
        assert torch.equal(item.globals_tf[p, 0], item.globals_tf[p, 1])  # box and flip shared across frames
        for f in range(2):
            checks = [(item.motion[p, f], item.motion_tf[p, f], 32)]
            checks += [(item.globals[p, f, c], item.globals_tf[p, f, c], 32) for c in range(2)]
            checks += [(item.locals[p, f, j], item.locals_tf[p, f, j], 16) for j in range(2)]
            for image, tf, size in checks:
                assert (image - resample(frames[t[f]], tf, size)).abs().mean() < 0.02


def test_photometric_changes_each_image():
    plain, jittered = pair_dataset(photometric=False)[(0, 0)], pair_dataset(photometric=True)[(0, 0)]
    assert torch.equal(plain.motion_tf, jittered.motion_tf)  # same geometry from the same seed
    diff = (plain.globals - jittered.globals).abs().flatten(3).mean(-1)
    assert (diff.amax(-1) > 1e-3).float().mean() > 0.5


def test_photometric_routing_transform_1_and_2():
    """With colour and blur neutralised only transform 2's solarize remains: it may touch motion crops of frame
    t + gap and second global crops, never the crops that get transform 1."""
    neutral = PhotometricConfig(jitter_p=0.0, grayscale_p=0.0, blur_sigma=(1e-3, 1e-3))
    catalog, sampler = synthetic(World(8)), PairSampler((1, 3), repeats=4)
    ds = PairDataset(catalog, sampler, VIEWS, photometric=neutral)
    plain = PairDataset(catalog, sampler, PairViewsConfig(**{**VIEWS.__dict__, "photometric": False}))
    solarized = 0
    for index in range(8):
        a, b = ds[(0, index)], plain[(0, index)]
        for got, ref in [(a.motion[:, 0], b.motion[:, 0]), (a.globals[:, :, 0], b.globals[:, :, 0])]:
            assert torch.allclose(got, ref, atol=1e-5)
        for got, ref in [(a.motion[:, 1], b.motion[:, 1]), (a.globals[:, :, 1], b.globals[:, :, 1])]:
            images, refs = got.flatten(0, -4), ref.flatten(0, -4)
            solar = torch.where(refs >= 0.5, 1 - refs, refs)
            same = (images - refs).abs().amax((1, 2, 3)) < 1e-5
            flipped = (images - solar).abs().amax((1, 2, 3)) < 1e-5
            assert (same | flipped).all()
            solarized += int((~same).sum())
    assert 0 < solarized < 8 * 4 * 3 * 0.5


def test_per_frame_pairs_visit_every_source_frame_once():
    ds = PairDataset(synthetic(World(3)), PairSampler((2, 4)), VIEWS, per_frame=True)
    assert len(ds) == 3 * (T - 2)
    firsts = [ds[(0, i)].frames[0].tolist() + [ds[(0, i)].video.item()] for i in range(0, len(ds), 5)]
    assert [(f[2], f[0]) for f in firsts] == [(i // (T - 2), i % (T - 2)) for i in range(0, len(ds), 5)]
    assert all(2 <= f[1] - f[0] <= 4 and f[1] < T for f in firsts)
    with pytest.raises(ValueError, match="repeats=1"):
        PairDataset(synthetic(World(3)), PairSampler((2, 4), repeats=2), VIEWS, per_frame=True)


def test_clip_tracks_follow_the_content():
    ds = ClipDataset(synthetic(World()), ClipSampler(6, 2), ClipViewsConfig(resize=40, size=32, grid=4), seed=3)
    flips = []
    for index in range(6):
        clip = ds[(0, index)]
        assert (
            isinstance(clip, ClipBatch)
            and clip.frames.shape == (1, 6, 3, 32, 32)
            and clip.tracks.shape == (1, 6, 16, 2)
        )
        tf = transform_from_tensor(clip.transform[0])
        flips.append(tf.flips)
        assert torch.allclose(clip.tracks[0, 0], grid_points(4, (32, 32)), atol=1e-4)
        steps = (clip.indices[0] - clip.indices[0, 0]).float()[:, None, None]
        expected = clip.tracks[0, :1] + steps * torch.tensor([tf.sx * 1.25, tf.sy * -0.5])
        assert torch.allclose(clip.tracks[0], expected, atol=1e-4)
        assert torch.equal(clip.in_crop[0], inside(clip.tracks[0], (32, 32)))
        # the clip's pixels under each track keep the colour of the query on frame 0
        grid = pixel_to_grid(clip.tracks[0], (32, 32))[:, :, None]
        colours = F.grid_sample(clip.frames[0], grid, align_corners=False)[..., 0]  # (T, 3, N)
        ok = clip.in_crop[0] & clip.visible[0]
        err = (colours - colours[:1]).abs().amax(1)[ok]
        assert err.mean() < 0.03
    assert any(flips) and not all(flips)


def test_clip_dataset_calls_the_tracker_on_original_frames(tmp_path):
    frames = World()[0].frames
    write_video(tmp_path / "a.mp4", frames)
    calls = []

    def still(clip: np.ndarray, queries: np.ndarray):
        calls.append((clip.shape, queries.copy()))
        return np.repeat(queries[None], len(clip), 0), np.ones((len(clip), len(queries)), bool)

    ds = ClipDataset(video_folder(tmp_path), ClipSampler(16, 2), ClipViewsConfig(resize=32, size=32, grid=2), still)
    clip = ds[0]
    assert calls[-1][0] == (16, H, W, 3)  # short video: 12 frames, the last one repeated
    assert clip.indices[0].tolist() == list(range(12)) + [11] * 4
    assert inside(torch.from_numpy(calls[-1][1]), (W, H)).all()
    assert torch.allclose(clip.tracks[0, 0], grid_points(2, (32, 32)), atol=1e-4)
    with pytest.raises(ValueError, match="tracker"):
        ClipDataset(video_folder(tmp_path), ClipSampler(), ClipViewsConfig())


def _video_dir(tmp_path):
    frames = World()[0].frames
    for name in ["a_good", "d_good"]:
        write_video(tmp_path / f"{name}.mp4", frames)
    data = (tmp_path / "a_good.mp4").read_bytes()
    (tmp_path / "b_cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "c_garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    return video_folder(tmp_path)


def test_bad_videos_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    catalog = _video_dir(tmp_path)
    ds = PairDataset(catalog, PairSampler((1, 3)), VIEWS)
    with caplog.at_level(logging.WARNING, logger="motionrep.data.datasets"):
        items = [ds[(0, i)] for i in range(4)]
    assert [it.skipped for it in items[::3]] == [(), ()]
    assert str(tmp_path / "b_cut.mp4") in items[1].skipped and str(tmp_path / "c_garbage.mp4") in items[2].skipped
    assert {catalog[v].name for it in items for v in it.video.tolist()} <= {"a_good", "d_good"}
    assert "b_cut.mp4" in caplog.text and "c_garbage.mp4" in caplog.text
    loader = build_loader(ds, batch_size=4, seed=0, shuffle=False)
    for _ in loader:
        pass
    assert loader.data_errors() == {
        "skip_events": 2,
        "skipped_videos": sorted(str(tmp_path / n) for n in ["b_cut.mp4", "c_garbage.mp4"]),
    }


def test_no_usable_video_fails_at_start(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetLayoutError, match=str(tmp_path)):
        PairDataset(video_folder(tmp_path), PairSampler((1, 3)), VIEWS)
    short = tmp_path / "short"
    short.mkdir()
    write_video(short / "two.mp4", World()[0].frames[:2])
    with pytest.raises(DatasetLayoutError, match="shorter than 16 frames"):
        PairDataset(video_folder(short), PairSampler((15, 30)), VIEWS)


def test_a_dataset_that_breaks_midway_raises_instead_of_hanging(tmp_path):
    catalog = _video_dir(tmp_path)
    ds = PairDataset(catalog, PairSampler((1, 3)), VIEWS, max_retries=5)
    for name in ["a_good", "d_good"]:
        (tmp_path / f"{name}.mp4").unlink()
    with pytest.raises(RuntimeError, match="5 videos in a row were unusable"):
        ds[(0, 0)]


def _batches(loader, n):
    it = loader.batches()
    return [next(it) for _ in range(n)]


def test_loader_workers_match_single_process():
    ds = pair_dataset(photometric=True)
    single = _batches(build_loader(ds, batch_size=4, workers=0, seed=5), 3)
    multi = _batches(build_loader(ds, batch_size=4, workers=2, seed=5), 3)
    for a, b in zip(single, multi, strict=True):
        assert torch.equal(a.video, b.video) and torch.equal(a.globals, b.globals) and torch.equal(a.locals, b.locals)


def test_loader_resumes_mid_epoch_exactly():
    ds = pair_dataset(n=6, repeats=1)
    loader = build_loader(ds, batch_size=2, seed=1)
    assert len(loader) == 3
    full = _batches(loader, 5)  # crosses into the second epoch
    resumed = build_loader(ds, batch_size=2, seed=1)
    it = resumed.batches()
    next(it)
    state = resumed.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 1
    fresh = build_loader(ds, batch_size=2, seed=1)
    fresh.load_state_dict(state)
    rest = _batches(fresh, 4)
    for a, b in zip(full[1:], rest, strict=True):
        assert torch.equal(a.video, b.video) and torch.equal(a.motion, b.motion)
    epochs = [set(b.video.tolist()) for b in full]
    assert set().union(*epochs[:3]) == set(range(6))  # an epoch visits every video once
    assert [b.video.tolist() for b in full[:3]] != [b.video.tolist() for b in full[3:5] + full[:1]]


def test_batch_size_must_match_repeats():
    with pytest.raises(ValueError, match="multiple"):
        build_loader(pair_dataset(repeats=2), batch_size=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_loader(pair_dataset(n=2, repeats=1), batch_size=4)


def test_resumable_sampler_shards_like_distributed_sampler():
    one = [i for _, i in ResumableSampler(10, seed=3)]
    ranks = [[i for _, i in ResumableSampler(10, seed=3, world_size=3, rank=r)] for r in range(3)]
    assert sorted(one) == list(range(10)) and all(len(r) == 3 for r in ranks)
    assert [one[k] for k in range(9)] == [ranks[k % 3][k // 3] for k in range(9)]
    padded = [[i for _, i in ResumableSampler(10, 3, drop_last=False, world_size=3, rank=r)] for r in range(3)]
    assert sorted(sum(padded, [])) == sorted(one + one[:2])


def _rank_epoch():
    ds = pair_dataset(n=6, repeats=1)
    loader = build_loader(ds, batch_size=1, seed=2, distributed=True)
    return [(b.video.item(), b.motion.numpy()) for b in loader]


def test_two_ranks_split_the_one_rank_epoch():
    single = {b.video.item(): b.motion for b in build_loader(pair_dataset(n=6, repeats=1), batch_size=1, seed=2)}
    per_rank = run_ranks(_rank_epoch, 2)
    assert [len(r) for r in per_rank] == [3, 3]
    videos = [v for r in per_rank for v, _ in r]
    assert sorted(videos) == list(range(6))
    for r in per_rank:
        for video, motion in r:
            assert np.array_equal(motion, single[video].numpy())
