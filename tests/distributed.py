"""Run a function on N gloo ranks (subprocesses on this machine) and collect each rank's result.

Used by every "2 ranks give the result of 1 rank" equivalence test. ``fn`` must be a module-level function
(picklable); it runs after the process group is up and may use ``motionrep.train.dist``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import socket
import traceback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, device: str, fn, args, queue) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    import torch

    from motionrep.train import dist

    torch.set_num_threads(1)
    try:
        dist.init_distributed(device)
        # serialised to bytes: tensors put on the queue directly would be shared through file descriptors that
        # vanish when this process exits before the parent reads them
        buffer = io.BytesIO()
        torch.save(fn(*args), buffer)
        queue.put((rank, buffer.getvalue(), None))
    except Exception:  # reported to the parent, which raises
        queue.put((rank, None, traceback.format_exc()))
    finally:
        dist.cleanup()


def run_ranks(fn, world_size: int = 2, *args, timeout: float = 120.0, device: str = "cpu") -> list:
    """``[fn(*args) on rank 0, fn(*args) on rank 1, ...]`` computed under a gloo process group (nccl, one GPU per
    rank, with ``device="cuda"``)."""
    import torch

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, port, device, fn, args, queue)) for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    try:
        for _ in range(world_size):
            rank, value, error = queue.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(f"rank {rank} failed:\n{error}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
