"""Small shared helpers: atomic file writes, seeding."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    If the body raises (or the process dies), ``path`` is left untouched: either the old
    file or nothing, never a half-written one. ``suffix`` defaults to the target's suffix so
    libraries that infer a format from the extension keep working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".part",
        dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Run CPU convolutions through PyTorch's native (im2col + BLAS) kernels, not oneDNN.

    oneDNN's float32 convolutions accumulate in an order that loses a few more bits. That
    is harmless for trained models but matters when reproducing the official outputs of the
    randomly initialised parity fixtures, whose activations reach 1e7..1e11 and whose
    output gate then sits on a knife edge (the bass fixture flips one gate with oneDNN:
    relative error 0.12 instead of 1.5e-5). Used by the parity tests and ``compat="official"``.
    """
    import warnings

    import torch
    with warnings.catch_warnings():
        # torch warns about oneDNN TF32 on Intel GPUs whenever these flags are set
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
        with torch.backends.mkldnn.flags(enabled=False):
            yield
