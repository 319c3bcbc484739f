"""Mixed precision for training: which reduced precision a device computes natively, and the
autocast + gradient scaling that goes with it.

``amp`` (a hyper-parameter of both recipes) asks for mixed precision:

* bfloat16 autocast on GPUs that support bfloat16 and on CPUs with native bfloat16
  instructions (AVX-512 BF16 or AMX on x86, BF16 on ARM): bfloat16 keeps float32's range,
  so no gradient scaling is needed;
* float16 autocast with a gradient scaler on GPUs without bfloat16;
* float32 elsewhere (a CPU without native bfloat16 would emulate it, slower than float32).

Weights, optimiser state and losses stay in float32 in every case.
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
    """Autocast and, for float16, gradient scaling; plain float32 when off.

    Args:
        enabled: ``True`` = mixed precision where the device supports it (see
            :func:`autocast_dtype`; a CPU without native bfloat16 trains in float32 with a
            warning); ``False`` = float32; ``None`` = on GPUs only.
        device: the training device.
        dtype: force this autocast dtype when on, instead of the device's choice (float16
            on a CPU exercises the gradient-scaling path in tests).

    Attributes:
        dtype: the autocast dtype, or ``None`` (float32).
        scaler: the ``GradScaler`` (float16 only), else ``None``.
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

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def describe(self) -> str:
        """``"float32"``, ``"bfloat16 autocast"`` or ``"float16 autocast + gradient scaling"``."""
        if self.dtype is None:
            return "float32"
        name = str(self.dtype).replace("torch.", "")
        return f"{name} autocast" + (" + gradient scaling" if self.scaler is not None else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: ``torch.autocast`` when on, a no-op otherwise."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` and ``optimizer.step()`` (call ``optimizer.zero_grad()``
        yourself). With gradient scaling, a step whose gradients overflowed is skipped and
        the scale lowered (GradScaler's usual behaviour)."""
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
