import pytest
import torch

from distributed import run_ranks
from motionrep.train import dist


def _reductions(seed: int):
    torch.manual_seed(seed + dist.rank())
    local = torch.randn(dist.rank() + 2, 3)  # ranks hold different numbers of rows
    return (
        local,
        dist.all_reduce_sum(local.sum(0)),
        dist.all_reduce_mean(torch.tensor([float(dist.rank())])),
        (dist.all_gather_cat(local)),
    )


def test_single_process_reductions_are_identity():
    t = torch.randn(4, 2)
    assert dist.world_size() == 1 and dist.rank() == 0 and dist.is_main()
    assert torch.equal(dist.all_reduce_sum(t), t) and torch.equal(dist.all_gather_cat(t), t)
    info = dist.init_distributed("cpu")
    assert info.world_size == 1 and info.device.type == "cpu"


def test_two_gloo_ranks_equal_one_rank():
    out = run_ranks(_reductions, 2, 0)
    full = torch.cat([out[0][0], out[1][0]])
    for _, total, mean, gathered in out:
        assert torch.allclose(total, full.sum(0), atol=1e-6)
        assert mean.item() == 0.5
        assert torch.equal(gathered, full)


def test_shard_partitions_range():
    parts = [dist.shard(10, 3, r) for r in range(3)]
    assert [list(range(10))[s] for s in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_nccl_ranks_reduce_cpu_tensors():
    out = run_ranks(_reductions, 2, 0, device="cuda")  # CPU tensors go through nccl and come back to the CPU
    full = torch.cat([out[0][0], out[1][0]])
    for _, total, mean, gathered in out:
        assert total.device.type == gathered.device.type == "cpu"
        assert torch.allclose(total, full.sum(0), atol=1e-6) and mean.item() == 0.5 and torch.equal(gathered, full)
