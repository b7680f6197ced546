import math

import numpy as np
import pytest

from motionrep.tracking.metrics import evaluation_mask, tapvid_metrics


def _reference(pred, pvis, gt, gvis, thresholds=(1, 2, 4, 8, 16)):
    """Entry-by-entry transcription of TAP-Vid's compute_tapvid_metrics ("first" query mode), one clip."""
    t_count, n = gvis.shape
    ev = np.zeros_like(gvis)
    for i in range(n):
        seen = np.flatnonzero(gvis[:, i])
        if seen.size:
            ev[seen[0] + 1 :, i] = True
    occ_ok = sum(pvis[t, i] == gvis[t, i] for t in range(t_count) for i in range(n) if ev[t, i])
    out = {"occlusion_accuracy": occ_ok / ev.sum()}
    within_all, jac_all = [], []
    for thr in thresholds:
        correct = tp = fp = pos = 0
        for t in range(t_count):
            for i in range(n):
                if not ev[t, i]:
                    continue
                close = math.dist(pred[t, i], gt[t, i]) < thr
                pos += gvis[t, i]
                correct += gvis[t, i] and close
                tp += gvis[t, i] and close and pvis[t, i]
                fp += pvis[t, i] and (not gvis[t, i] or not close)
        within_all.append(correct / pos)
        jac_all.append(tp / (pos + fp))
    out["delta_avg"], out["average_jaccard"] = np.mean(within_all), np.mean(jac_all)
    return out


def test_hand_computed_positions():
    gt = np.zeros((3, 2, 2))
    pred = gt.copy()
    pred[1, 0] = (1.5, 0.0)  # 1.5 px off
    pred[2, 0] = (0.0, 3.0)  # 3 px off
    vis = np.ones((3, 2), bool)
    m = tapvid_metrics(pred, vis, gt, vis)
    assert m["pts_within_1"] == 0.5 and m["pts_within_2"] == 0.75 and m["pts_within_4"] == 1.0
    assert m["delta_avg"] == pytest.approx((0.5 + 0.75 + 1 + 1 + 1) / 5)
    assert m["jaccard_1"] == pytest.approx(2 / 6) and m["jaccard_2"] == pytest.approx(3 / 5)
    assert m["average_jaccard"] == pytest.approx((1 / 3 + 0.6 + 3) / 5)
    assert m["occlusion_accuracy"] == 1.0


def test_hand_computed_occlusion():
    gt = np.zeros((4, 1, 2))
    gvis = np.array([[1], [0], [1], [1]], bool)
    pvis = np.array([[1], [1], [1], [0]], bool)
    m = tapvid_metrics(gt, pvis, gt, gvis)
    assert m["occlusion_accuracy"] == pytest.approx(1 / 3)  # frames 1 and 3 wrong, frame 2 right
    assert m["delta_avg"] == 1.0  # positions count wherever the ground truth is visible
    assert m["average_jaccard"] == pytest.approx(1 / 3)  # TP frame 2; FN frame 3; FP frame 1
    assert m["occlusion_precision"] == 0.0 and m["occlusion_recall"] == 0.0


def test_evaluation_starts_after_first_visible_frame():
    gvis = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 0]], bool)[None]  # (B, T, N)
    ev = evaluation_mask(gvis)[0]
    np.testing.assert_array_equal(ev, [[0, 0, 0], [0, 0, 1], [1, 0, 1]])


def test_matches_entrywise_reference_on_random_clips():
    rng = np.random.default_rng(0)
    for _ in range(3):
        gt = rng.uniform(0, 64, (6, 9, 2))
        pred = gt + rng.normal(0, 4, gt.shape)
        gvis, pvis = rng.random((6, 9)) > 0.3, rng.random((6, 9)) > 0.3
        gvis[0] = True
        m, ref = tapvid_metrics(pred, pvis, gt, gvis), _reference(pred, pvis, gt, gvis)
        for key, value in ref.items():
            assert m[key] == pytest.approx(value), key


def test_batch_averages_clips_and_skips_empty_ones():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 32, (2, 5, 4, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    vis = np.ones((2, 5, 4), bool)
    both = tapvid_metrics(pred, vis, gt, vis)
    one, two = tapvid_metrics(pred[0], vis[0], gt[0], vis[0]), tapvid_metrics(pred[1], vis[1], gt[1], vis[1])
    assert both["delta_avg"] == pytest.approx((one["delta_avg"] + two["delta_avg"]) / 2)
    never = np.zeros((1, 5, 4), bool)  # a clip with nothing visible is not evaluated
    mixed = tapvid_metrics(
        np.concatenate([pred[:1], pred[:1]]),
        np.concatenate([vis[:1], never]),
        np.concatenate([gt[:1], gt[:1]]),
        np.concatenate([vis[:1], never]),
    )
    assert mixed["delta_avg"] == pytest.approx(one["delta_avg"])
    assert math.isnan(tapvid_metrics(pred[0], never[0], gt[0], never[0])["delta_avg"])


def test_shape_errors():
    with pytest.raises(ValueError, match="tracks must"):
        tapvid_metrics(np.zeros((3, 2, 2)), np.ones((3, 2)), np.zeros((3, 3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="visibility"):
        tapvid_metrics(np.zeros((3, 2, 2)), np.ones((3, 3)), np.zeros((3, 2, 2)), np.ones((3, 2)))
