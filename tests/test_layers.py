"""The import arrows of ARCHITECTURE.md, read from the source with ``ast``: inference
(separation, segmentation, evaluation), models, layers, audio, images and data never import
training or the command line, the layers never import the models, and segmentation
reads images without the dataset modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "d3net"
FORBIDDEN = {
    ("separate", "segment", "models", "nn", "audio", "image", "evaluate", "data"): ("train",
                                                                                  "cli"),
    ("nn",): ("models",),
    ("segment", "image"): ("data",),  # inference reads images without the dataset modules
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Every module ``path`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _top(module: str) -> str:
    """``d3net.evaluate.seg`` -> ``evaluate``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "d3net" else ""


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: _module(p))
def test_imports_follow_the_arrows(path):
    source = _top(_module(path))
    for importers, forbidden in FORBIDDEN.items():
        if source not in importers:
            continue
        wrong = sorted({name for name in _imports(path) if _top(name) in forbidden})
        assert not wrong, f"{_module(path)} must not import {', '.join(wrong)}"


def test_the_checker_sees_relative_imports():
    imported = set(_imports(PACKAGE / "evaluate" / "seg.py"))
    assert "d3net.segment" in imported and "d3net.evaluate.miou" in imported
