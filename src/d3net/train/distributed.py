"""Where a training process sits in a run: torchrun/DDP setup, SyncBatchNorm, seeding and
random states, and the sharded per-epoch shuffle. Only rank 0 writes files; collective calls
are made on every rank.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import D3NetError
from ..utils import resolve_device

SYNC_BN_MODES = ("auto", "on", "off")


@dataclass
class Distributed:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # the device this process trains on
    backend: Optional[str] = None  # "nccl", "gloo" or None (single process)
    owns_group: bool = False  # init_distributed created the process group

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether several processes take part (a process group is initialised)."""
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def sum(self, value: Union[Tensor, float]) -> Tensor:
        """Sum of a tensor (or number) over the ranks, returned as a new tensor."""
        tensor = torch.as_tensor(value, dtype=torch.float64).clone()
        if self.enabled:
            tensor = tensor.to(self.device if self.backend == "nccl" else "cpu")
            torch_dist.all_reduce(tensor)
        return tensor.cpu()

    def mean(self, value: Union[Tensor, float]) -> float:
        """Mean of a scalar over the ranks (same float on every rank)."""
        return float(self.sum(value)) / self.world_size

    def gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, indexed by rank, on every rank."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank: DDP broadcasts them at
        each forward, but the last step's update stays per-rank."""
        if not self.enabled:
            return
        for buffer in model.buffers():
            torch_dist.broadcast(buffer.data, src=0)


def init_distributed(device: Union[str, torch.device, None] = None) -> Distributed:
    """Set up this process for training, under ``torchrun`` (``WORLD_SIZE`` > 1: NCCL on GPUs,
    each process on ``cuda:LOCAL_RANK``; gloo on CPU) or alone. Call
    :func:`shutdown_distributed` at the end.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).

    Raises:
        D3NetError: an unusable device, or more local ranks than GPUs.
    """
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(device=device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise D3NetError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                             "GPU(s) on this machine (lower --nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    owns_group = not torch_dist.is_initialized()
    if owns_group:
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Distributed(rank=rank, world_size=world_size, device=device, backend=backend,
                       owns_group=owns_group)


def shutdown_distributed(dist: Distributed) -> None:
    """Tear down the process group set up by :func:`init_distributed` (if it made one)."""
    if dist.owns_group and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def maybe_sync_batchnorm(model: nn.Module, mode: str, dist: Distributed) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm under DDP on CUDA when ``mode`` is ``"auto"``
    (the paper's setting) or ``"on"`` (refused on CPU, where SyncBatchNorm does not run).

    Raises:
        D3NetError: an unknown mode, or ``"on"`` without CUDA.
    """
    if mode not in SYNC_BN_MODES:
        raise D3NetError(f"--sync-bn must be one of {', '.join(SYNC_BN_MODES)}, got {mode!r}")
    if mode == "on" and dist.device.type != "cuda":
        raise D3NetError("--sync-bn on needs CUDA: PyTorch's SyncBatchNorm does not run on "
                         "CPU tensors; use --sync-bn off (or auto) on CPU")
    use = dist.enabled and dist.device.type == "cuda" and mode in ("auto", "on")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if use else model


def wrap_ddp(model: nn.Module, dist: Distributed) -> nn.Module:
    """``DistributedDataParallel(model)`` under DDP, ``model`` itself otherwise."""
    if not dist.enabled:
        return model
    if dist.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[dist.device.index],
                                       output_device=dist.device.index)
    return DistributedDataParallel(model)


def epoch_batches(dataset_size: int, batch_size: int, epoch: int, seed: int,
                  dist: Distributed) -> List[List[int]]:
    """This rank's full batches of one epoch: a ``(seed, epoch)`` shuffle of the dataset's
    indices sharded as ``DistributedSampler`` does, so a resumed run draws the same batches."""
    sampler = torch.utils.data.DistributedSampler(
        range(dataset_size), num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
        seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    full = len(indices) - len(indices) % batch_size
    return [indices[i:i + batch_size] for i in range(0, full, batch_size)]


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank`` (so ranks get
    different, reproducible streams)."""
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % 2 ** 32)
    torch.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)


def rng_state() -> Dict[str, Any]:
    """The Python, NumPy and torch (CPU and every CUDA device) random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


__all__ = ["Distributed", "init_distributed", "shutdown_distributed", "maybe_sync_batchnorm",
           "wrap_ddp", "epoch_batches", "seed_everything", "rng_state", "set_rng_state",
           "SYNC_BN_MODES"]
