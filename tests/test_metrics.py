"""Evaluation metrics against independent computations."""

import itertools
import math

import numpy as np
import pytest
import torch
from tests.distributed import run_ranks

from motionrep.eval import metrics as M


def _miou_loop(target, pred, num_classes, ignore=255):
    ious, correct, total = [], 0, 0
    for c in range(num_classes):
        t = (target == c) & (target != ignore)
        p = (pred == c) & (target != ignore)
        union = (t | p).sum().item()
        if union:
            ious.append((t & p).sum().item() / union)
    keep = target != ignore
    correct = (target[keep] == pred[keep]).sum().item()
    total = keep.sum().item()
    return 100 * np.mean(ious), 100 * correct / total


def test_confusion_miou_matches_per_class_loop():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 6, (3, 17, 19), generator=g)
    target[0, :4] = 255
    target[target == 5] = 4  # class 5 absent from the ground truth ...
    pred = torch.randint(0, 6, target.shape, generator=g)
    pred[pred == 3] = 2  # ... class 3 never predicted
    cm = M.confusion_matrix(target, pred, 6)
    assert cm.sum() == (target != 255).sum()
    scores = M.segmentation_scores(cm)
    miou, acc = _miou_loop(target, pred, 6)
    assert scores["miou"] == pytest.approx(miou)
    assert scores["acc"] == pytest.approx(acc)
    iou = M.per_class_iou(cm)
    assert iou[5] == 0.0  # predicted but absent: counts as 0


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels outside"):
        M.confusion_matrix(torch.tensor([7]), torch.tensor([0]), 3)


def _best_by_brute_force(cm):
    c, k = cm.shape
    best = -1
    for perm in itertools.permutations(range(k), c):
        best = max(best, sum(cm[i, perm[i]] for i in range(c)))
    return best


@pytest.mark.parametrize("c,k", [(3, 3), (4, 4), (3, 5)])
def test_hungarian_matches_brute_force(c, k):
    g = torch.Generator().manual_seed(c * 10 + k)
    cm = torch.randint(0, 50, (c, k), generator=g)
    mapping = M.hungarian_match(cm)
    matched = sum(cm[mapping[j], j].item() for j in range(k) if mapping[j] >= 0)
    assert matched == _best_by_brute_force(cm.numpy())
    assert sorted(mapping[mapping >= 0].tolist()) == list(range(c))  # one-to-one


def test_hungarian_recovers_a_permutation():
    target = torch.randint(0, 4, (500,))
    perm = torch.tensor([2, 0, 3, 1])
    clusters = perm[target]
    cm = M.confusion_matrix(target, clusters, 4)
    assert M.matched_scores(cm, "hungarian")["miou"] == pytest.approx(100.0)
    assert M.matched_scores(cm, "identity")["miou"] < 50


def test_many_to_one_matches_majority_vote():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2000,), generator=g)
    clusters = torch.randint(0, 9, (2000,), generator=g)
    clusters[target == 1] = torch.randint(0, 3, ((target == 1).sum(),), generator=g)
    cm = M.confusion_matrix(target, clusters, 3, 9)
    mapping = M.many_to_one_match(cm)
    for k in range(9):  # direct majority vote among the pixels of cluster k
        votes = np.bincount(target[clusters == k].numpy(), minlength=3)
        assert mapping[k] == votes.argmax()
    relabelled = mapping[clusters]
    expected, _ = _miou_loop(target, relabelled, 3)
    assert M.matched_scores(cm, "many_to_one")["miou"] == pytest.approx(expected)


def test_flow_errors_by_hand():
    gt = torch.zeros(1, 2, 2, 2)
    pred = torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0] = 3.0  # error 3
    pred[0, :, 0, 1] = torch.tensor([0.6, 0.8])  # error 1
    pred[0, :, 1, 0] = torch.tensor([3.0, 4.0])  # error 5
    pred[0, 1, 1, 1] = 100.0  # invalid pixel, ignored
    valid = torch.tensor([[[True, True], [True, False]]])
    s = M.flow_scores(M.flow_error_sums(pred, gt, valid))
    assert s["epe"] == pytest.approx((3 + 1 + 5) / 3)
    assert s["px1"] == pytest.approx(0.0)  # strict: EPE < 1
    assert s["px3"] == pytest.approx(100 / 3)
    assert s["px5"] == pytest.approx(200 / 3)


def _disk_mask(h, w, cx, cy, r):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((xx - cx) ** 2 + (yy - cy) ** 2) <= r**2


def test_region_j_and_boundary_f():
    a = _disk_mask(40, 40, 20, 20, 10)
    assert M.region_j(a[None], a[None]).item() == 1.0
    assert M.boundary_f(a[None], a[None], 1).item() == 1.0
    b = _disk_mask(40, 40, 21, 20, 10)  # one pixel shift
    j = M.region_j(a[None], b[None]).item()
    assert j == pytest.approx(((a & b).sum() / (a | b).sum()).item())
    assert M.boundary_f(a[None], b[None], 1).item() == pytest.approx(1.0)  # within tolerance
    assert M.boundary_f(a[None], b[None], 0).item() < 0.6
    far = _disk_mask(40, 40, 5, 5, 3)
    assert M.boundary_f(a[None], far[None], 1).item() == 0.0
    empty = torch.zeros(1, 40, 40, dtype=torch.bool)
    assert M.region_j(empty, empty).item() == 1.0 and M.boundary_f(empty, empty).item() == 1.0
    assert M.boundary_f(empty, a[None]).item() == 0.0


def test_boundary_is_inner_contour_and_ignores_image_border():
    m = torch.zeros(1, 6, 6, dtype=torch.bool)
    m[0, 1:5, 1:5] = True
    expected = m.clone()
    expected[0, 2:4, 2:4] = False
    assert torch.equal(M.boundary(m), expected)
    full = torch.ones(1, 6, 6, dtype=torch.bool)
    assert not M.boundary(full).any()


def test_boundary_tolerance_davis():
    assert M.boundary_tolerance((480, 854)) == math.ceil(0.008 * math.hypot(480, 854))


def _rank_confusion(target, pred):
    from motionrep.train import dist

    part = dist.shard(len(target))
    return M.reduce_confusion(M.confusion_matrix(target[part], pred[part], 5)).numpy()


def test_confusion_two_ranks_equal_one():
    target = torch.randint(0, 5, (7, 8, 8))
    pred = torch.randint(0, 5, (7, 8, 8))
    single = M.confusion_matrix(target, pred, 5)
    r0, r1 = run_ranks(_rank_confusion, 2, target, pred)
    assert (r0 == single.numpy()).all() and (r1 == single.numpy()).all()
