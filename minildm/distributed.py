"""Several GPUs (or several CPU processes) with PyTorch's DistributedDataParallel.

`torchrun` starts N copies of the same program and tells each one who it is
through environment variables:

    WORLD_SIZE   how many processes there are in total (N)
    RANK         this process's number, 0 .. N-1 (rank 0 logs and writes checkpoints)
    LOCAL_RANK   its number on this machine = which GPU it drives

Every process holds a full copy of the model and draws its *own* batches. After
`loss.backward()`, DDP averages the gradients of all processes (an all-reduce),
so every copy takes the same optimizer step and the copies stay identical:
N GPUs train like one GPU with an N times bigger batch.

    rank 0:  batch_0 -> forward -> backward -> g_0 --+
    rank 1:  batch_1 -> forward -> backward -> g_1 --+--> all-reduce: g = (g_0 + g_1) / 2
                                                     |    on every rank
    every rank: optimizer.step(g)  (same g, same weights) <--+

Launch (one machine, 4 GPUs; on a CPU-only machine the processes use gloo):

    torchrun --standalone --nproc_per_node=4 -m minildm train ldm --preset gpu

Without torchrun nothing here does anything: `init_distributed` returns a
one-process DistInfo and train.py runs as usual.

Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import atexit
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """Who this process is among the processes training together."""
    rank: int = 0          # 0 .. world_size - 1
    world_size: int = 1    # number of processes (GPUs)
    local_rank: int = 0    # index of the GPU on this machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, shows progress and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """True in a normal run and on rank 0 of a torchrun run (use it to print or save once)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device | None]:
    """Join the process group when launched by torchrun; pick this process's device.

    Returns (DistInfo(), None) for a normal one-process run (the caller picks the
    device). Under torchrun: rank r uses cuda:LOCAL_RANK with the NCCL backend
    when CUDA is available (and device is auto or cuda), else the CPU with gloo.
    """
    if not launched_by_torchrun():
        return DistInfo(), None
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if device_name not in ("auto", "cuda", "cpu"):
        raise ValueError(f"under torchrun the device must be auto, cuda or cpu (each process "
                         f"takes cuda:LOCAL_RANK), got {device_name!r}")
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if device_name == "cuda" and not use_cuda:
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available; use 'auto' or 'cpu'")
    if use_cuda:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)  # NCCL needs each process on its own GPU
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set by torchrun.
        # device_id binds NCCL to this process's GPU (older PyTorch lacks the argument).
        bind = use_cuda and "device_id" in inspect.signature(dist.init_process_group).parameters
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                **({"device_id": device} if bind else {}))
        atexit.register(_shutdown)
    return info, device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module`: rank 0's weights are copied to every
    rank now, and gradients are averaged across ranks during each backward.

    find_unused_parameters=True lets a loss skip some parameters in a step (a
    little slower, but any model in the course works without changes; PyTorch
    prints a one-time warning when a model turns out to use all of them).
    """
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def mean(value: torch.Tensor, info: DistInfo) -> float:
    """The average of a scalar over all ranks (the value itself in a one-process run)."""
    value = value.detach().float().reshape(1).clone()
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value.item()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if `flag` is True on at least one rank (so every rank stops together)."""
    if not info.enabled:
        return bool(flag)
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather(obj, info: DistInfo) -> list:
    """Every rank's `obj` as a list indexed by rank (used for the per-rank RNG states)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank.

    DDP keeps the *parameters* identical, but each rank updates its BatchNorm
    running statistics with its own batch; at the end of training rank 0's
    (the ones it saved) become everyone's.
    """
    if info.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here."""
    if info.enabled:
        dist.barrier()
