"""Weight initialisation of the official trainings (NNabla's Glorot rules)."""
from __future__ import annotations

import torch
from torch import nn

GLOROT_DISTRIBUTIONS = ("normal", "uniform")


@torch.no_grad()
def glorot_init_(model: nn.Module, conv: str = "uniform") -> nn.Module:
    """Glorot initialisation as NNabla applies it, in place.

    Convolutions: Glorot ``conv`` (``"uniform"``: NNabla's default initialiser, which the
    official segmentation model uses; ``"normal"``: ``calc_normal_std_glorot``, the
    official music training's ``init_method='xavier'``). Transposed convolutions: Glorot
    uniform (NNabla's default for them in both trainings). Biases zero; BatchNorm weight 1
    and bias 0.

    Args:
        model: any module; its convolutions and BatchNorm layers are re-initialised.
        conv: ``"uniform"`` or ``"normal"``.

    Returns:
        ``model``.

    Raises:
        ValueError: another ``conv``.
    """
    if conv not in GLOROT_DISTRIBUTIONS:
        raise ValueError(f"conv must be one of {GLOROT_DISTRIBUTIONS}, got {conv!r}")
    conv_init = nn.init.xavier_normal_ if conv == "normal" else nn.init.xavier_uniform_
    for module in model.modules():
        if isinstance(module, nn.ConvTranspose2d):
            nn.init.xavier_uniform_(module.weight)
        elif isinstance(module, nn.Conv2d):
            conv_init(module.weight)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
            continue
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


__all__ = ["glorot_init_"]
