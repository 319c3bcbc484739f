"""D3Net in PyTorch: music source separation and semantic segmentation.

The public face (imported lazily, so ``import d3net`` stays cheap)::

    import d3net
    model = d3net.models.d3net_s()                 # builders: d3net_s, d3net_l, d3net_mss
    model = d3net.load("model.safetensors")        # our model files (config inside)
    separator = d3net.Separator.from_dir("models/mss")
    segmenter = d3net.Segmenter.from_file("models/d3net-s.safetensors")
    model = d3net.load_nnabla("D3Net-S.h5", "d3net-s")   # Sony's official weights
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "models": ("d3net.models", None),
    "load": ("d3net.models", "load"),
    "save": ("d3net.models", "save"),
    "Separator": ("d3net.separate", "Separator"),
    "Segmenter": ("d3net.segment", "Segmenter"),
    "load_nnabla": ("d3net.convert", "load_nnabla"),
    "D3NetError": ("d3net.errors", "D3NetError"),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'd3net' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)
