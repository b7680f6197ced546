import math

import pytest
import torch

from distributed import run_ranks
from motionrep.losses import DINOLoss, frame_pair_view_mask, single_image_view_mask


def _reference_loss(student, teacher, pairs, center, t_temp, s_temp):
    """Explicit loops over pairs and samples with hand-written softmaxes."""
    terms = []
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if not pairs[i, j]:
                continue
            per_sample = []
            for b in range(teacher.shape[1]):
                t = torch.exp((teacher[i, b] - center[0]) / t_temp)
                t = t / t.sum()
                s = student[j, b] / s_temp
                log_s = s - torch.log(torch.exp(s).sum())
                per_sample.append(-(t * log_s).sum())
            terms.append(sum(per_sample) / len(per_sample))
    return sum(terms) / len(terms)


def test_loss_matches_explicit_computation():
    loss_fn = DINOLoss(16, teacher_temp=0.07, student_temp=0.2)
    loss_fn.center.normal_()
    student, teacher = torch.randn(6, 3, 16).double(), torch.randn(2, 3, 16).double()
    pairs = torch.rand(2, 6) > 0.4
    pairs[0, 0] = True
    expected = _reference_loss(student, teacher, pairs, loss_fn.center.double(), 0.07, 0.2)
    assert torch.allclose(loss_fn(student, teacher, pairs), expected.float(), atol=1e-5)
    assert torch.allclose(loss_fn(list(student), teacher, pairs), expected.float(), atol=1e-5)


def test_gradient_reaches_student_only():
    loss_fn = DINOLoss(8)
    student = torch.randn(4, 2, 8, requires_grad=True)
    teacher = torch.randn(2, 2, 8, requires_grad=True)
    loss_fn(student, teacher, single_image_view_mask(2, 2)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None


def test_teacher_temperature_warmup():
    loss_fn = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_steps=10)
    temps = [loss_fn.teacher_temperature(s) for s in (0, 5, 10, 50)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert DINOLoss(8).teacher_temperature(0) == 0.04
    student, teacher = torch.randn(3, 2, 8), torch.randn(2, 2, 8)
    pairs = single_image_view_mask(2, 1)
    at_half = DINOLoss(8, teacher_temp=0.055)(student, teacher, pairs)
    assert torch.allclose(loss_fn(student, teacher, pairs, step=5), at_half)


def _view_descriptors(n_global, n_local, frames):
    globals_ = [(f, "g", k) for f in range(frames) for k in range(n_global)]
    locals_ = [(f, "l", k) for f in range(frames) for k in range(n_local)]
    return globals_, globals_ + locals_


@pytest.mark.parametrize(("n_local", "terms"), [(8, 72), (4, 40), (0, 8)])
def test_frame_pair_mask_skips_identical_and_same_box_pairs(n_local, terms):
    mask = frame_pair_view_mask(n_local_per_frame=n_local)
    teacher_views, student_views = _view_descriptors(2, n_local, 2)
    assert mask.shape == (4, 4 + 2 * n_local) and mask.dtype == torch.bool
    assert int(mask.sum()) == terms
    for i, tv in enumerate(teacher_views):
        for j, sv in enumerate(student_views):
            same_box = sv[1] == "g" and sv[2] == tv[2]  # identical view, or the same global box in the other frame
            assert mask[i, j] == (not same_box)
    skipped = {tuple(ij) for ij in torch.nonzero(~mask).tolist()}
    assert skipped == {(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (3, 1), (3, 3)}


def test_single_image_mask_skips_only_identical_views():
    mask = single_image_view_mask(2, 6)
    expected = torch.ones(2, 8, dtype=torch.bool)
    expected[0, 0] = expected[1, 1] = False
    assert torch.equal(mask, expected)


def test_center_update_with_momentum():
    loss_fn = DINOLoss(5, center_momentum=0.9)
    t1, t2 = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    loss_fn.update_center(t1)
    c1 = 0.1 * t1.reshape(-1, 5).mean(0, keepdim=True)
    assert torch.allclose(loss_fn.center, c1, atol=1e-7)
    loss_fn.update_center(list(t2))
    assert torch.allclose(loss_fn.center, 0.9 * c1 + 0.1 * t2.reshape(-1, 5).mean(0), atol=1e-7)
    assert "center" in loss_fn.state_dict()


def test_centering_shifts_teacher_targets():
    loss_fn = DINOLoss(4)
    teacher = torch.randn(1, 2, 4)
    student = torch.randn(2, 2, 4)
    pairs = torch.ones(1, 2, dtype=torch.bool)
    before = loss_fn(student, teacher, pairs)
    loss_fn.center.fill_(3.0)  # a constant centre does not change the softmax
    assert torch.allclose(loss_fn(student, teacher, pairs), before)
    loss_fn.center.copy_(teacher[0, :1])
    assert not torch.allclose(loss_fn(student, teacher, pairs), before)


def _center_on_rank(rows_per_rank, seed):
    from motionrep.train import dist

    torch.manual_seed(seed)
    full = torch.randn(2, sum(rows_per_rank), 6)
    start = sum(rows_per_rank[: dist.rank()])
    loss_fn = DINOLoss(6)
    loss_fn.update_center(full[:, start : start + rows_per_rank[dist.rank()]])
    return loss_fn.center


def test_two_gloo_ranks_give_the_single_rank_center():
    single = _center_on_rank([5], 3)
    for center in run_ranks(_center_on_rank, 2, [3, 2], 3):  # unequal shards: the global count matters
        assert torch.allclose(center, single, atol=1e-7)


def test_user_errors():
    loss_fn = DINOLoss(8)
    student, teacher = torch.randn(3, 2, 8), torch.randn(2, 2, 8)
    with pytest.raises(ValueError, match="pairs must be"):
        loss_fn(student, teacher, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no"):
        loss_fn(student, teacher, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="student_out"):
        loss_fn(torch.randn(3, 2, 7), teacher, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch"):
        loss_fn(torch.randn(3, 4, 8), teacher, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperatures"):
        DINOLoss(8, teacher_temp=0.0)
    assert math.isfinite(loss_fn(student, teacher, torch.ones(2, 3, dtype=torch.bool)).item())
