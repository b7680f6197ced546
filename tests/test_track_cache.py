import numpy as np
import pytest

from motionrep.tracking.base import get_tracker, grid_queries, load_tracks
from motionrep.tracking.cache import TrackCache, TrackKey, config_hash


class CountingTracker:
    """Wraps a tracker and counts the calls that reach it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name = inner.name

    @property
    def config(self):
        return self.inner.config

    def __call__(self, frames, queries):
        self.calls += 1
        return self.inner(frames, queries)


@pytest.fixture
def clip():
    rng = np.random.default_rng(0)
    return (rng.random((4, 24, 32, 3)) * 255).astype(np.uint8)


def test_miss_then_hit_returns_identical_tracks(tmp_path, clip):
    cache, tracker = TrackCache(tmp_path), CountingTracker(get_tracker("lk"))
    queries = grid_queries(3, 32, 24)
    first = cache.track(tracker, "vid/01", [0, 2, 4, 6], clip, queries)
    second = cache.track(tracker, "vid/01", [0, 2, 4, 6], clip, queries)
    assert tracker.calls == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].parent.parent.name == "lk"  # ROOT/<tracker>/<video>/<digest>.npz
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write leaves no temporary
    assert np.array_equal(load_tracks(files[0])[0], first[0])


def test_every_key_field_separates_entries():
    queries = grid_queries(2, 32, 24)
    base = dict(video_id="v", frame_indices=[0, 1, 2, 3], resolution=(32, 24), tracker="dis", config={"a": 1})
    keys = {TrackKey.make(**base, queries=queries).digest}
    for field, value in [
        ("video_id", "w"),
        ("frame_indices", [0, 1, 2, 4]),
        ("resolution", (64, 48)),
        ("tracker", "lk"),
        ("config", {"a": 2}),
    ]:
        keys.add(TrackKey.make(**{**base, field: value}, queries=queries).digest)
    keys.add(TrackKey.make(**base, queries=queries + 0.5).digest)
    assert len(keys) == 7
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})  # order-free
    with pytest.raises(ValueError, match="JSON"):
        config_hash({"a": object()})


def test_tracker_config_change_recomputes(tmp_path, clip):
    cache, queries = TrackCache(tmp_path), grid_queries(2, 32, 24)
    a = CountingTracker(get_tracker("lk", fb_threshold=1.0))
    b = CountingTracker(get_tracker("lk", fb_threshold=0.5))
    cache.track(a, "v", range(4), clip, queries)
    cache.track(b, "v", range(4), clip, queries)
    assert a.calls == b.calls == 1 and len(list(tmp_path.rglob("*.npz"))) == 2


def test_corrupt_entry_is_recomputed(tmp_path, clip):
    cache, tracker = TrackCache(tmp_path), CountingTracker(get_tracker("lk"))
    queries = grid_queries(2, 32, 24)
    expected = cache.track(tracker, "v", range(4), clip, queries)
    path = next(tmp_path.rglob("*.npz"))
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="corrupt"):
        again = cache.track(tracker, "v", range(4), clip, queries)
    assert tracker.calls == 2 and np.array_equal(again[0], expected[0])
    assert np.array_equal(load_tracks(path)[0], expected[0])  # rewritten


def test_index_count_must_match_clip(tmp_path, clip):
    with pytest.raises(ValueError, match="frame indices"):
        TrackCache(tmp_path).track(get_tracker("lk"), "v", [0, 1], clip, grid_queries(2, 32, 24))
