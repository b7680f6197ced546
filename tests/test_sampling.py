"""Frame-pair and clip samplers: ranges, distributions, short-video fallbacks, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from motionrep.data.sampling import ClipSampler, PairSampler, VideoTooShortError


def test_pairs_follow_the_midway_recipe():
    sampler = PairSampler(gap=(15, 30), repeats=5)
    pairs = np.concatenate([sampler.sample(1200, np.random.default_rng(s)) for s in range(400)])
    assert pairs.shape == (2000, 2)
    start, gap = pairs[:, 0], pairs[:, 1] - pairs[:, 0]
    assert start.min() >= 0 and start.max() <= 1200 - 31  # start uniform in [0, len - 30)
    assert set(np.unique(gap)) == set(range(15, 31))  # every gap of [15, 30] occurs
    assert abs(gap.mean() - 22.5) < 0.4 and abs(start.mean() - (1200 - 31) / 2) < 25


def test_pairs_on_short_videos_keep_the_minimum_gap():
    sampler = PairSampler(gap=(15, 30), repeats=200)
    pairs = sampler.sample(20, np.random.default_rng(0))
    gap = pairs[:, 1] - pairs[:, 0]
    assert gap.min() >= 15 and pairs.max() <= 19 and pairs.min() >= 0
    with pytest.raises(VideoTooShortError):
        sampler.sample(15, np.random.default_rng(0))
    assert sampler.min_frames() == 16


def test_samplers_are_reproducible():
    pairs = PairSampler((1, 3), repeats=4)
    assert np.array_equal(pairs.sample(50, np.random.default_rng(7)), pairs.sample(50, np.random.default_rng(7)))
    assert not np.array_equal(pairs.sample(500, np.random.default_rng(7)), pairs.sample(500, np.random.default_rng(8)))
    clips = ClipSampler()
    assert np.array_equal(clips.sample(300, np.random.default_rng(3)), clips.sample(300, np.random.default_rng(3)))


@pytest.mark.parametrize(("length", "step", "max_start"), [(300, 6, 300 - 72), (72, 6, 0), (50, 4, 2), (12, 1, 0)])
def test_clips_regular_mode(length, step, max_start):
    sampler = ClipSampler(num_frames=12, step=6)
    rng = np.random.default_rng(0)
    clips = np.stack([sampler.sample(length, rng) for _ in range(3000)])
    assert (np.diff(clips, axis=1) == step).all()
    assert clips[:, 0].min() == 0 and clips[:, 0].max() == max_start
    assert clips.max() < length


def test_clips_shorter_than_the_clip_repeat_the_last_frame():
    clip = ClipSampler(num_frames=12, step=6).sample(7, np.random.default_rng(0))
    assert clip.tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6]


def test_invalid_sampler_settings():
    with pytest.raises(ValueError, match="gap"):
        PairSampler(gap=(5, 2))
    with pytest.raises(ValueError, match="repeats"):
        PairSampler(repeats=0)
    with pytest.raises(ValueError):
        ClipSampler(num_frames=0)


def test_pair_from_a_given_source_frame():
    sampler = PairSampler(gap=(15, 30))
    rng = np.random.default_rng(0)
    pairs = np.concatenate([sampler.sample_at(100, 80, rng) for _ in range(200)])
    assert (pairs[:, 0] == 80).all() and pairs[:, 1].min() == 95 and pairs[:, 1].max() == 99
    with pytest.raises(VideoTooShortError):
        sampler.sample_at(100, 85, rng)
