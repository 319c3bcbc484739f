"""What both training recipes share: distributed setup, mixed precision, checkpoints,
the NaN guard, logging and progress bars. Nothing here knows about music or images.

A recipe (``train/mss.py``, ``train/seg.py``) uses it like this::

    dist = init_distributed(device)                 # torchrun-aware, or one process
    seed_everything(seed, dist.rank)
    model = maybe_sync_batchnorm(model.to(dist.device), sync_bn, dist)
    model = wrap_ddp(model, dist)
    amp = MixedPrecision(enabled=True, device=dist.device)   # no-op on CPU
    ...
    with amp.autocast():
        loss = criterion(model(x), y)
    value = dist.mean(loss.detach())                # same value on every rank
    check_finite_loss(value, epoch=e, iteration=i, checkpoint=ckpt_path)
    amp.backward_and_step(loss, optimizer)
    ...
    state = checkpoint_state(model, optimizer, scheduler, amp, dist, epoch=..., ...)
    save_checkpoint(ckpt_path, state, dist)         # collective call, rank 0 writes

Rules every recipe follows: only rank 0 writes files (``dist.is_main``); collective calls
(:func:`checkpoint_state`, :meth:`Distributed.mean`, ...) are made on every rank.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import D3NetError
from ..utils import PathLike, atomic_path

CHECKPOINT_FORMAT = "d3net-checkpoint"
CHECKPOINT_VERSION = 1
SYNC_BN_MODES = ("auto", "on", "off")


# ----------------------------------------------------------------------------------------
# distributed setup
# ----------------------------------------------------------------------------------------

@dataclass
class Distributed:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: global rank, 0 in a single-process run.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process trains on.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (single process).
        owns_group: whether :func:`init_distributed` created the process group (and
            :func:`shutdown_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files, logs and shows progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether several processes take part (a process group is initialised)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
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

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, indexed by rank, on every rank."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a clear error for unusable devices."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise D3NetError(f"invalid device {device!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise D3NetError(f"device {device} requested but CUDA is not available")
    return device


def init_distributed(device: Union[str, torch.device, None] = None) -> Distributed:
    """Set up this process for training, under ``torchrun`` or alone.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the default process group is
    initialised from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``:
    NCCL on GPUs (each process uses ``cuda:LOCAL_RANK``), gloo on CPU. Call
    :func:`shutdown_distributed` at the end.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
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
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                       backend=backend, owns_group=owns_group)


def shutdown_distributed(dist: Distributed) -> None:
    """Tear down the process group set up by :func:`init_distributed` (if it made one)."""
    if dist.owns_group and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def maybe_sync_batchnorm(model: nn.Module, mode: str, dist: Distributed) -> nn.Module:
    """Convert BatchNorm layers to SyncBatchNorm as ``mode`` says.

    ``"auto"``: only when training on CUDA with several processes (the paper's setting).
    ``"on"``: always under DDP; refused on CPU, where PyTorch's SyncBatchNorm does not run.
    ``"off"``: plain per-process BatchNorm.
    """
    if mode not in SYNC_BN_MODES:
        raise D3NetError(f"--sync-bn must be one of {', '.join(SYNC_BN_MODES)}, got {mode!r}")
    if mode == "on" and dist.device.type != "cuda":
        raise D3NetError("--sync-bn on needs CUDA: PyTorch's SyncBatchNorm does not run on "
                         "CPU tensors; use --sync-bn off (or auto) on CPU")
    use = dist.enabled and dist.device.type == "cuda" and mode in ("auto", "on")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if use else model


def wrap_ddp(model: nn.Module, dist: Distributed, **kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` under DDP, ``model`` itself otherwise."""
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    if dist.device.type == "cuda":
        kwargs.setdefault("device_ids", [dist.device.index])
        kwargs.setdefault("output_device", dist.device.index)
    return DistributedDataParallel(model, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) \
        else model


# ----------------------------------------------------------------------------------------
# seeding and RNG state
# ----------------------------------------------------------------------------------------

def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank``.

    Ranks get different streams, so anything random inside the model or the data
    pipeline differs between processes while the run stays reproducible.
    """
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
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu()
                                          for s in cuda])


# ----------------------------------------------------------------------------------------
# mixed precision
# ----------------------------------------------------------------------------------------

class MixedPrecision:
    """float16 autocast + gradient scaling on CUDA; plain float32 everywhere else.

    Args:
        enabled: request mixed precision (ignored unless ``device`` is CUDA).
        device: the training device.
    """

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = bool(enabled) and torch.device(device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled) if self.enabled \
            else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: ``torch.autocast`` on CUDA, a no-op otherwise."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer,
                          max_grad_norm: Optional[float] = None,
                          parameters: Optional[Iterable[Tensor]] = None) -> None:
        """``loss.backward()``, optional gradient clipping, ``optimizer.step()``.

        With gradient scaling, a step whose gradients overflowed is skipped and the scale
        lowered (GradScaler's usual behaviour). Call ``optimizer.zero_grad()`` yourself.
        """
        if self.scaler is None:
            loss.backward()
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(list(parameters or _params(optimizer)), max_grad_norm)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if max_grad_norm is not None:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(list(parameters or _params(optimizer)), max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _params(optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]


# ----------------------------------------------------------------------------------------
# NaN / Inf guard
# ----------------------------------------------------------------------------------------

class NonFiniteLossError(D3NetError):
    """The training loss became NaN or infinite; the run stopped."""


def check_finite_loss(value: float, *, epoch: Optional[int] = None,
                      iteration: Optional[int] = None,
                      checkpoint: Optional[PathLike] = None) -> None:
    """Stop the run with one clear line when the loss is NaN or infinite.

    Pass the loss already averaged over the ranks (:meth:`Distributed.mean`) so that every
    rank stops at the same step instead of leaving the others waiting in an all-reduce.
    Nothing is written after the bad step, so the last checkpoint on disk (the end of the
    previous epoch or checkpoint interval) is the last good one.
    """
    if math.isfinite(value):
        return
    where = ", ".join(part for part in (
        f"epoch {epoch + 1}" if epoch is not None else "",
        f"iteration {iteration}" if iteration is not None else "") if part)
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint is not None
            and Path(checkpoint).is_file() else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"training loss became {value} ({where}); stopped, {kept} (try a lower --lr, or "
        "check the data for silent/corrupt files)")


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------

def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Optional[Any], amp: Optional[MixedPrecision],
                     dist: Distributed, *, epoch: int, iteration: int,
                     best_metric: Optional[float] = None,
                     config: Optional[Dict[str, Any]] = None,
                     hparams: Optional[Dict[str, Any]] = None,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything needed to continue a run exactly. A collective call (every rank).

    Args:
        model: the (possibly DDP-wrapped) model; its plain state dict is stored.
        optimizer, scheduler, amp: their states (``scheduler``/``amp`` may be ``None``).
        dist: the run's :class:`Distributed`; every rank's RNG states are gathered so a
            resumed DDP run continues each rank's random stream.
        epoch: completed epochs.
        iteration: completed optimisation steps.
        best_metric: the best validation metric so far.
        config: the model config (``d3net.configs.to_dict``).
        hparams: the run's hyper-parameters (plain types).
        extra: anything else the recipe wants back.
    """
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": amp.state_dict() if amp is not None else None,
        "epoch": int(epoch), "iteration": int(iteration),
        "best_metric": None if best_metric is None else float(best_metric),
        "config": config, "hparams": hparams, "extra": extra or {},
        "world_size": dist.world_size,
        "rng": dist.gather_object(rng_state()),
    }


def save_checkpoint(path: PathLike, state: Dict[str, Any], dist: Optional[Distributed] = None
                    ) -> Optional[Path]:
    """Write ``state`` atomically (temp file + rename) on rank 0; other ranks skip."""
    if dist is not None and not dist.is_main:
        return None
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise D3NetError(f"checkpoint not found: {path}")
    try:
        # our own files hold numpy RNG states and plain dicts: full unpickling is needed
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # corrupt / truncated / foreign file
        raise D3NetError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise D3NetError(f"{path}: not a d3net training checkpoint")
    return state


def restore_checkpoint(state: Dict[str, Any], model: nn.Module,
                       optimizer: Optional[torch.optim.Optimizer] = None,
                       scheduler: Optional[Any] = None, amp: Optional[MixedPrecision] = None,
                       dist: Optional[Distributed] = None, restore_rng: bool = True) -> None:
    """Load a checkpoint's states into the run's objects (model before DDP wrapping or
    after, either works) and, when the world size matches, this rank's RNG states."""
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as exc:
        raise D3NetError(f"checkpoint weights do not fit the model "
                         f"({str(exc).splitlines()[0]})") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if amp is not None:
        amp.load_state_dict(state.get("scaler"))
    if not restore_rng:
        return
    rank = dist.rank if dist is not None else 0
    states = state.get("rng") or []
    world = dist.world_size if dist is not None else 1
    if len(states) == world:
        set_rng_state(states[rank])
    else:
        warnings.warn(f"the checkpoint was written by {len(states)} process(es), this run has "
                      f"{world}: random streams restart from the seed (the run stays valid "
                      "but is not bit-identical to an uninterrupted one)")


# ----------------------------------------------------------------------------------------
# logging and progress
# ----------------------------------------------------------------------------------------

_warned_no_tensorboard = False


class Logger:
    """TensorBoard scalars on rank 0; silent elsewhere.

    TensorBoard is optional (``pip install 'd3net[train]'``): without it the logger warns
    once and does nothing.
    """

    def __init__(self, log_dir: Optional[PathLike], dist: Optional[Distributed] = None):
        self.writer = None
        if log_dir is None or (dist is not None and not dist.is_main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            global _warned_no_tensorboard
            if not _warned_no_tensorboard:
                warnings.warn("tensorboard is not installed: no training curves are logged "
                              "(pip install 'd3net[train]')")
                _warned_no_tensorboard = True
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True,
                 dist: Optional[Distributed] = None, **kwargs: Any) -> tqdm:
    """A tqdm bar shown on rank 0 when ``enabled`` (hidden on the other ranks)."""
    show = enabled and (dist is None or dist.is_main)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not show, **kwargs)


def log(message: str, dist: Optional[Distributed] = None, quiet: bool = False) -> None:
    """Print one line on rank 0 (through tqdm, so bars are not broken)."""
    if quiet or (dist is not None and not dist.is_main):
        return
    tqdm.write(message)


__all__ = [
    "Distributed", "init_distributed", "shutdown_distributed", "resolve_device",
    "maybe_sync_batchnorm", "wrap_ddp", "unwrap", "seed_everything", "rng_state",
    "set_rng_state", "MixedPrecision", "NonFiniteLossError", "check_finite_loss",
    "checkpoint_state", "save_checkpoint", "load_checkpoint", "restore_checkpoint", "Logger",
    "progress_bar", "log", "SYNC_BN_MODES",
]


class HyperParams:
    """Base of the recipes' hyper-parameter dataclasses: validation and dict round trip
    (what checkpoints store)."""

    @staticmethod
    def _require(checks) -> None:
        """Raise the message of the first ``(ok, message)`` pair that is not ok."""
        for ok, message in checks:
            if not ok:
                raise D3NetError(message)

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def merge_resumed(cls, saved: Dict[str, Any], overrides: Dict[str, Any],
                      resumable: Sequence[str]):
        """The saved run's hyper-parameters with the ``overrides`` (``None`` = keep) that
        may change on resume; any other override that differs is an error."""
        current = cls.from_dict(saved).to_dict()
        changed = {}
        for key, value in overrides.items():
            if value is None:
                continue
            new = cls.from_dict({**current, key: value}).to_dict()[key]
            if new != current[key]:
                if key not in resumable:
                    raise D3NetError(f"{key} = {value!r} differs from the run being resumed "
                                     f"({current[key]!r}); resume with the same value or start "
                                     "a new run in another --out folder")
                changed[key] = new
        return cls.from_dict({**current, **changed})
