"""Mixed precision for training (the ``amp`` hyper-parameter): bfloat16 autocast where the
device computes it natively (it keeps float32's range: no gradient scaling), float16 autocast
with a gradient scaler on GPUs without bfloat16, float32 elsewhere (a CPU without native
bfloat16 would emulate it, slower than float32). Weights, optimiser state and losses stay
float32.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from ..utils import native_bfloat16


def autocast_dtype(device: Union[str, torch.device]) -> Optional[torch.dtype]:
    """The mixed-precision dtype for ``device``: bfloat16 where native, float16 on a GPU
    without bfloat16, ``None`` (stay in float32) on any other device."""
    device = torch.device(device)
    if native_bfloat16(device):
        return torch.bfloat16
    return torch.float16 if device.type == "cuda" else None


class MixedPrecision:
    """Autocast and, for float16, gradient scaling (``scaler``); plain float32 when off.

    Args:
        enabled: ``True`` = mixed precision where the device supports it (a CPU without
            native bfloat16 trains in float32 with a warning); ``False`` = float32;
            ``None`` = on GPUs only.
        device: the training device.
        dtype: force this autocast dtype when on (float16 on a CPU tests gradient scaling).
    """

    def __init__(self, enabled: Optional[bool], device: Union[str, torch.device],
                 dtype: Optional[torch.dtype] = None):
        device = torch.device(device)
        wanted = device.type == "cuda" if enabled is None else bool(enabled)
        self.device_type = device.type
        self.dtype = (dtype or autocast_dtype(device)) if wanted else None
        if wanted and self.dtype is None:
            warnings.warn(f"amp: {device} has no native bfloat16, training in float32")
        self.scaler = (torch.amp.GradScaler(device.type) if self.dtype == torch.float16
                       else None)

    def describe(self) -> str:
        if self.dtype is None:
            return "float32"
        name = str(self.dtype).replace("torch.", "")
        return f"{name} autocast" + (" + gradient scaling" if self.scaler is not None else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` and ``optimizer.step()``, through the gradient scaler if any."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


__all__ = ["MixedPrecision", "autocast_dtype"]
