"""Distributed context and the project's reductions.

torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) selects
distributed mode; world size 1 needs no process group, and every reduction below is then the identity. The backend
is nccl on CUDA and gloo on CPU. Every cross-rank reduction of the project goes through this module, which moves
CPU tensors to the current CUDA device for nccl and back, so callers may reduce tensors wherever they live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (if any) and pick the device.

    ``device`` ``None`` or ``"auto"``: CUDA (this process's local rank) when available, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def comm_device(t: torch.Tensor) -> torch.device:
    """Where a collective on ``t`` must run: nccl only moves CUDA tensors, gloo any."""
    if t.device.type != "cuda" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor on ``t``'s device; the input is untouched). No gradient flows through it."""
    if not is_distributed():
        return t.clone()
    out = t.detach().to(comm_device(t), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of per-rank values."""
    return all_reduce_sum(t) / world_size()


def all_gather_cat(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's tensor along ``dim`` in rank order; sizes along ``dim`` may differ per rank.

    The result lies on ``t``'s device. No gradient flows through it.
    """
    if not is_distributed():
        return t.detach().clone()
    home, device = t.device, comm_device(t)
    t = t.detach().to(device).contiguous()
    n = world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(n)]
    dist.all_gather(sizes, torch.tensor([t.shape[dim]], device=device))
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    pad_shape = list(t.shape)
    pad_shape[dim] = longest - t.shape[dim]
    padded = torch.cat([t, t.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes, strict=True)], dim=dim).to(home)


def shard(n: int, world: int | None = None, rank_: int | None = None) -> slice:
    """The contiguous slice of ``range(n)`` that this rank owns (rank order; sizes differ by at most one)."""
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return slice(start, start + base + (1 if rank_ < extra else 0))
