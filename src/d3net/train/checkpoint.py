"""Training checkpoints: everything needed to continue a run exactly (weights, optimiser,
scheduler, gradient scaler, every rank's random states, the run's history), written
atomically by rank 0."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import D3NetError
from ..utils import PathLike, atomic_path, unwrap
from .distributed import Distributed, rng_state, set_rng_state
from .precision import MixedPrecision

CHECKPOINT_FORMAT = "d3net-checkpoint"
CHECKPOINT_VERSION = 2  # 2: one history layout for both recipes


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Optional[Any], amp: Optional[MixedPrecision],
                     dist: Distributed, *, epoch: int, iteration: int,
                     best_metric: Optional[float] = None,
                     config: Optional[Dict[str, Any]] = None,
                     hparams: Optional[Dict[str, Any]] = None,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything needed to continue a run exactly, every rank's RNG states included. A
    collective call (every rank); ``model`` may be DDP-wrapped, ``epoch`` and ``iteration``
    count completed ones, ``config`` and ``hparams`` are plain dicts, ``extra`` is anything
    else the trainer wants back (its history)."""
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
    """Read a checkpoint written by :func:`save_checkpoint` (on CPU).

    Raises:
        D3NetError: a missing, unreadable or foreign file, or another checkpoint version.
    """
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
    if state.get("version") != CHECKPOINT_VERSION:
        raise D3NetError(f"{path}: checkpoint version {state.get('version')}, this d3net "
                         f"reads version {CHECKPOINT_VERSION} (finish that run with the d3net "
                         "that started it, or start a new run)")
    return state


def restore_checkpoint(state: Dict[str, Any], model: nn.Module,
                       optimizer: Optional[torch.optim.Optimizer] = None,
                       scheduler: Optional[Any] = None, amp: Optional[MixedPrecision] = None,
                       dist: Optional[Distributed] = None) -> None:
    """Load a checkpoint's states into the run's objects (model before DDP wrapping or
    after, either works) and, when the world size matches, this rank's RNG states.

    Raises:
        D3NetError: the weights do not fit the model.
    """
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
    dist = dist or Distributed()
    states = state.get("rng") or []
    if len(states) == dist.world_size:
        set_rng_state(states[dist.rank])
    else:
        warnings.warn(f"the checkpoint was written by {len(states)} process(es), this run has "
                      f"{dist.world_size}: random streams restart from the seed (the run stays "
                      "valid but is not bit-identical to an uninterrupted one)")


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "checkpoint_state", "save_checkpoint",
           "load_checkpoint", "restore_checkpoint"]
