"""Weight initialisation of the official trainings (NNabla's Glorot rules)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def glorot_init_(model: nn.Module, conv: str = "uniform") -> nn.Module:
    """Glorot initialisation as NNabla applies it, in place; returns ``model``.

    Convolutions: Glorot ``conv`` (``"uniform"``: NNabla's default initialiser, which the
    official segmentation model uses; ``"normal"``: ``calc_normal_std_glorot``, the
    official music training's ``init_method='xavier'``). Transposed convolutions: Glorot
    uniform (NNabla's default for them in both trainings). Biases zero; BatchNorm weight 1
    and bias 0.

    Raises:
        ValueError: ``conv`` is neither ``"uniform"`` nor ``"normal"``.
    """
    inits = {"normal": nn.init.xavier_normal_, "uniform": nn.init.xavier_uniform_}
    if conv not in inits:
        raise ValueError(f"conv must be one of {tuple(inits)}, got {conv!r}")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            transposed = isinstance(module, nn.ConvTranspose2d)
            (nn.init.xavier_uniform_ if transposed else inits[conv])(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


__all__ = ["glorot_init_"]
