"""Checkpoints: atomic writes, weights_only loading, keep-last-k, RNG state round trip."""

import random

import numpy as np
import pytest
import torch

from motionrep.train.checkpoint import CheckpointDir, atomic_save, load_checkpoint, rng_state, set_rng_state


def test_atomic_save_and_weights_only_load(tmp_path):
    state = {"step": 3, "w": torch.arange(4.0), "nested": {"xs": [1, 2.5, "a"], "t": (1, 2)}}
    path = tmp_path / "sub" / "c.pt"
    atomic_save(state, path)
    back = load_checkpoint(path)
    assert back["step"] == 3 and torch.equal(back["w"], state["w"]) and back["nested"] == state["nested"]
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_keep_last_and_last_pointer(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    for step in (2, 4, 6):
        ckpts.save({"step": step}, step, periodic=True)
    assert [p.name for p in ckpts.periodic()] == ["step_00000004.pt", "step_00000006.pt"]
    assert load_checkpoint(ckpts.last)["step"] == 6
    ckpts.save({"step": 7}, 7, periodic=False)
    assert load_checkpoint(ckpts.last)["step"] == 7 and len(ckpts.periodic()) == 2


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    np.random.normal()  # noqa: NPY002 (leaves a cached gaussian in the state)
    atomic_save(rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.pt"))
    second = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]
