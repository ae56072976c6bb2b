"""Data parallelism for the training and discovery loops, under `torchrun` or `accelerate launch`.

Every rank draws the same seeded global batch and works on its share (`shard`); the count-weighted
gradients are summed across ranks (`average_gradients`) before clipping and the optimiser step, so every
rank applies the same update and the prompt (PEZ's continuous copy included) stays identical everywhere.
With the same global batch and seed, N processes follow the single-process run up to float rounding.
Scoring on held-out data runs on every rank (identical results, so every rank makes the same "best prompt"
decision); only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def init_from_environment() -> None:
    """Join the process group that `torchrun` / `accelerate launch` describe in the environment (if any)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: NCCL refuses two ranks on one device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's share of a global batch (rank r takes items r, r + N, ...)."""
    return list(indices[rank() :: world_size()])


def average_gradients(parameters: Sequence[torch.Tensor], local_count: int, global_count: int) -> None:
    """Turn each rank's gradient of its shard's mean loss into the gradient of the global batch's mean loss."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        combine(parameter.grad, local_count, global_count)


def combine(value: torch.Tensor, local_count: int, global_count: int) -> torch.Tensor:
    """In place: the global batch's mean from each rank's shard mean (weights local/global, summed)."""
    if world_size() > 1:
        value.mul_(local_count / global_count)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """In place: `value` added up over the ranks (unchanged in one process)."""
    return combine(value, 1, 1)


def global_mean(value: float, local_count: int, global_count: int) -> float:
    """`combine` for a Python number (the logged loss, identical on every rank)."""
    return combine(torch.tensor([value], dtype=torch.float64), local_count, global_count).item()


def check_batch_size(batch_size: int) -> None:
    if batch_size < world_size():
        raise ValueError(f"batch_size {batch_size} is smaller than the {world_size()} processes: each needs examples.")


def check_identical_across_ranks(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise if any rank holds different values (the replicas of the prompt must never drift apart)."""
    if world_size() == 1:
        return
    for tensor in tensors:
        local = tensor.detach().to(torch.float64).cpu().flatten()
        gathered = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(gathered, local)
        if not all(torch.equal(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError(f"The {what} differs between processes; data-parallel training went out of sync.")
