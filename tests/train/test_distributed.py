"""Distributed helpers on one process (the 2-process behaviour is tested in test_ddp.py)."""

from __future__ import annotations

import torch

from m3embed.train import distributed


def test_one_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    device, owns = distributed.init_distributed("cpu")
    assert device == torch.device("cpu") and not owns and not distributed.is_initialized()
    assert distributed.get_rank() == 0 and distributed.get_world_size() == 1 and distributed.is_main_process()


def test_gathers_return_the_local_tensor_and_keep_gradients():
    x = torch.randn(3, 4, requires_grad=True)
    assert distributed.all_gather_with_grad(x) is x and distributed.all_gather(x) is x
    distributed.all_gather_with_grad(x).sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 4))
    assert distributed.all_reduce_mean({"a": torch.tensor(2.0), "b": 0.5}) == {"a": 2.0, "b": 0.5}
    assert distributed.broadcast_object({"k": 1}) == {"k": 1}
    distributed.barrier()  # a no-op
