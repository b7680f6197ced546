"""Video sources: frame-exact seeking in PyAV files, frame folders, errors for broken input."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from motionrep.data.sources import FrameCache, FrameFolderSource, PyAVSource, SynthSource, VideoReadError, write_video

T, H, W = 40, 48, 64


def flat_frames(n: int = T) -> np.ndarray:
    """Frame k is a flat grey of level 10 + 6k, identifiable after lossy coding."""
    return np.stack([np.full((H, W, 3), 10 + 6 * k, np.uint8) for k in range(n)])


def frame_ids(images: np.ndarray) -> list[int]:
    return np.round((images.reshape(len(images), -1).mean(1) - 10) / 6).astype(int).tolist()


@pytest.mark.parametrize(("ext", "codec"), [(".mp4", "libx264"), (".mkv", "libx264"), (".avi", "mpeg4")])
def test_pyav_reads_requested_frames_in_order(tmp_path, ext, codec):
    path = write_video(tmp_path / f"v{ext}", flat_frames(), codec=codec, gop=5)
    indices = [33, 3, 3, 17, 0, 39, 18]
    with PyAVSource(path) as src:
        assert (src.num_frames, src.size, src.fps, src.name) == (T, (H, W), 30.0, "v")
        out = src.read(indices)
    assert out.shape == (len(indices), H, W, 3) and out.dtype == np.uint8
    assert frame_ids(out) == indices


def test_pyav_seek_matches_sequential_decode(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", frames, gop=7)
    with av.open(str(path)) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    indices = np.random.default_rng(1).integers(0, T, 12)
    with PyAVSource(path, seek_gap=4) as src:
        np.testing.assert_array_equal(src.read(indices), reference[indices])


class _CountingContainer:
    """Proxy of an av container that counts decoded frames."""

    def __init__(self, container):
        self._container, self.decoded = container, 0

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self.decoded += 1
            yield frame

    def __getattr__(self, name):
        return getattr(self._container, name)


def test_pyav_seeks_instead_of_decoding_everything(tmp_path):
    path = write_video(tmp_path / "long.mp4", flat_frames(120 // 3).repeat(3, axis=0), gop=10)
    with PyAVSource(path) as src:
        counter = _CountingContainer(src._container)
        src._container = counter
        src.read([101, 105])
        assert counter.decoded <= 10 + 6  # from the keyframe at 100 up to 105 (plus codec delay)


def test_pyav_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    data = write_video(tmp_path / "full.mp4", frames, gop=5).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    for name in ["cut.mp4", "garbage.mp4", "missing.mp4"]:
        with pytest.raises(VideoReadError, match=name):
            PyAVSource(tmp_path / name)


def test_pyav_truncated_after_header_raises_on_read(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = H, W, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with PyAVSource(cut) as src:
        assert src.num_frames == T  # the header still promises every frame
        with pytest.raises(VideoReadError, match="cut_faststart.mp4"):
            src.read([0, T - 1])


def test_pyav_rejects_out_of_range_indices(tmp_path):
    with PyAVSource(write_video(tmp_path / "v.mp4", flat_frames(8))) as src, pytest.raises(IndexError):
        src.read([8])


def test_frame_folder_natural_order_and_missing_frames(tmp_path):
    frames = flat_frames(12)
    for k, image in enumerate(frames):
        Image.fromarray(image).save(tmp_path / f"img_{k + 1}.png")  # unpadded: img_10 after img_9
    src = FrameFolderSource(tmp_path, fps=6)
    assert (src.num_frames, src.size, src.fps, src.name) == (12, (H, W), 6.0, tmp_path.name)
    np.testing.assert_array_equal(src.read([11, 0, 9]), frames[[11, 0, 9]])
    (tmp_path / "img_10.png").unlink()
    with pytest.raises(VideoReadError, match="img_10.png"):
        src.read([9])
    (tmp_path / "img_3.png").write_bytes(b"not a png")
    with pytest.raises(VideoReadError, match="img_3.png"):
        src.read([2])


def test_frame_folder_without_frames_raises(tmp_path):
    with pytest.raises(VideoReadError, match="no jpg/png frames"):
        FrameFolderSource(tmp_path)


def test_frame_cache_evicts_least_recently_used_by_bytes():
    cache = FrameCache(max_bytes=3 * 100)
    for key in "abc":
        cache.put(key, np.zeros(100, np.uint8))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("d", np.zeros(100, np.uint8))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd") and len(cache) == 3
    cache.put("huge", np.zeros(1000, np.uint8))
    assert cache.get("huge") is None


class _CountingWorld:
    def __init__(self):
        self.renders = 0

    def __len__(self):
        return 2

    def __getitem__(self, i):
        self.renders += 1
        return _Video(i)


class _Video:
    def __init__(self, i):
        self.frames = flat_frames(6) + i

    def track(self, xy0, t0=0):
        return np.repeat(xy0[None], 6, 0) + np.arange(6)[:, None, None] - t0, np.ones((6, len(xy0)), bool)


def test_synth_source_reads_tracks_and_caches_frames():
    world, cache = _CountingWorld(), FrameCache(10**7)
    with SynthSource(world, 1, cache=cache) as src:
        assert (src.num_frames, src.size) == (6, (H, W))
        np.testing.assert_array_equal(src.read([4, 1]), flat_frames(6)[[4, 1]] + 1)
        tracks, visible = src.track([2, 3, 5], np.array([[1.0, 2.0]], np.float32))
    assert tracks.shape == (3, 1, 2) and visible.all()
    np.testing.assert_allclose(tracks[:, 0, 0], [1.0, 2.0, 4.0])  # queries live on frame indices[0] = 2
    with SynthSource(world, 1, cache=cache) as again:
        again.read([0])
    assert world.renders == 1


def test_synth_source_tracks_from_the_scene_match_the_rendered_video():
    from motionrep.data.synth import SynthWorld, synth_preset

    world = SynthWorld(synth_preset("tiny"), "train", 0, 2)
    queries = np.array([[3.2, 5.0], [20.0, 11.5], [30.0, 30.0]], np.float32)
    cached = SynthSource(world, 1, cache=FrameCache(10**7))
    cached.read([0])
    scene_tracks = SynthSource(world, 1, cache=cached._cache).track([1, 2, 4], queries)  # frames cached: no render
    video = world[1]
    expected, visible = video.track(queries, t0=1)
    np.testing.assert_array_equal(scene_tracks[0], expected[[1, 2, 4]])
    np.testing.assert_array_equal(scene_tracks[1], visible[[1, 2, 4]])


def test_frame_count_scan_runs_once_per_file(tmp_path):
    from motionrep.data import sources

    path = write_video(tmp_path / "v.mkv", flat_frames(10))  # mkv stores no frame count
    with PyAVSource(path) as src:
        assert src.num_frames == 10
    (key,) = [k for k in sources._FRAME_COUNTS if k[0] == str(path.resolve())]
    sources._FRAME_COUNTS[key] = 7  # a second open must reuse the cached count, not scan again
    with PyAVSource(path) as src:
        assert src.num_frames == 7
    del sources._FRAME_COUNTS[key]
