"""D3Net in PyTorch: music source separation and semantic segmentation.

The public face (imported lazily, so ``import d3net`` stays cheap)::

    import d3net
    model = d3net.models.d3net_s()                 # builders: d3net_s, d3net_l, d3net_mss
    model = d3net.models.d3net_s(weights="official-d3net-s")   # Sony's weights, cached
    model = d3net.load("model.safetensors")        # any model spec: file, folder, .h5, name
    models = d3net.load_separation("official-mss")  # {"vocals": ..., "drums": ..., ...}
    separator = d3net.Separator.from_pretrained("official-mss")   # or "demo", a folder
    segmenter = d3net.Segmenter.from_pretrained("official-d3net-s")
    model = d3net.load_nnabla("D3Net-S.h5", "d3net-s")   # an official file by hand
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "models": ("d3net.models", None),
    "load": ("d3net.models", "load"),
    "load_separation": ("d3net.models", "load_separation"),
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
