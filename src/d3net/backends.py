"""Network execution backends: run one target's music network on a batch of patches.

A *runner* maps magnitude patches ``(patches, channels, bins, frames)`` to the target's
estimate of the same shape, float32, on the batch's device:

- ``"torch"`` (:class:`TorchRunner`): the PyTorch module, channels-last on CPU.
- ``"openvino"`` (:class:`OpenVINORunner`, CPU only, ``pip install 'd3net[openvino]'``):
  the network converted once and cached.

``"auto"`` picks OpenVINO for d3net music networks on CPU when it is installed (and not
for ``compat="official"``), PyTorch otherwise and on GPUs. ``precision="auto"`` picks
bfloat16 where the hardware computes it natively (:func:`d3net.utils.native_bfloat16`:
a CPU with AVX-512 BF16 or AMX, a CUDA GPU with native bfloat16) and float32 elsewhere,
where bfloat16 is emulated and no faster. bfloat16 changes magnitudes by ~1e-3 relative.

OpenVINO runs with as many threads as ``torch.get_num_threads()``, so one setting
(``torch.set_num_threads`` or ``OMP_NUM_THREADS``) governs both backends.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib.util
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Protocol, Union

import torch
from torch import Tensor, nn

from d3net.errors import D3NetError
from d3net.models import D3NetMSS, fingerprint
from d3net.utils import PathLike, cache_home, exact_float32, native_bfloat16

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "float32", "bfloat16")
INSTALL_OPENVINO = "pip install 'd3net[openvino]'"

__all__ = ["BACKENDS", "PRECISIONS", "Runner", "TorchRunner", "OpenVINORunner",
           "create_runner", "resolve_backend", "resolve_precision",
           "openvino_available", "PatchNetwork", "convert_openvino", "openvino_cache_dir"]


class Runner(Protocol):
    """Runs one network: ``(patches, channels, bins, frames)`` -> same shape, float32."""

    backend: str
    precision: str

    def __call__(self, batch: Tensor) -> Tensor: ...

    def release_memory(self) -> None:
        """Free what the runner holds between calls (activations), if anything."""


def openvino_available() -> bool:
    """Whether the ``openvino`` package is installed."""
    return importlib.util.find_spec("openvino") is not None


def _require_openvino(models: list[nn.Module]) -> None:
    if not all(isinstance(m, D3NetMSS) for m in models):
        raise D3NetError("OpenVINO runs d3net music networks (D3NetMSS) only")
    if not openvino_available():
        raise D3NetError(f"OpenVINO is not installed: {INSTALL_OPENVINO}")


def resolve_precision(precision: str, device: Union[str, torch.device],
                      compat: Optional[str] = None) -> str:
    """``"auto"`` -> ``"bfloat16"`` or ``"float32"`` (see the module docstring).

    Raises:
        D3NetError: unknown precision, or bfloat16 with ``compat="official"``.
    """
    if precision not in PRECISIONS:
        raise D3NetError(f"unknown precision {precision!r}; expected one of "
                         f"{', '.join(PRECISIONS)}")
    if compat == "official":
        if precision == "bfloat16":
            raise D3NetError("compat 'official' reproduces the official float32 arithmetic; "
                             "it cannot run in bfloat16")
        return "float32"
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def resolve_backend(backend: str, device: Union[str, torch.device],
                    compat: Optional[str] = None,
                    models: Optional[list[nn.Module]] = None) -> str:
    """``"auto"`` -> ``"openvino"`` or ``"torch"`` for ``models`` on ``device`` (see the
    module docstring; other modules than d3net music networks stay in PyTorch); checks
    that an explicit choice can run.

    Raises:
        D3NetError: unknown backend, OpenVINO requested but not installed, on a non-CPU
            device, with ``compat="official"``, or for a network that is not a
            :class:`~d3net.models.D3NetMSS`.
    """
    if backend not in BACKENDS:
        raise D3NetError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    convertible = all(isinstance(m, D3NetMSS) for m in (models or []))
    if backend == "auto":
        use = (device.type == "cpu" and compat is None and convertible
               and openvino_available())
        return "openvino" if use else "torch"
    if backend == "openvino":
        if compat == "official":
            raise D3NetError("compat 'official' runs PyTorch's native float32 kernels; use "
                             "backend 'torch' (or 'auto')")
        if device.type != "cpu":
            raise D3NetError(f"the openvino backend runs on the CPU; got device {device} "
                             "(use backend 'torch' there)")
        _require_openvino(models or [])
    return backend


class TorchRunner:
    """Runs a network in PyTorch.

    Args:
        model: maps ``(patches, channels, bins, frames)`` to the same shape; put in eval
            mode and, on CPU unless ``compat="official"``, into the channels-last layout
            (oneDNN's fastest for these narrow convolutions; float32 results to ~1e-7).
        precision: ``"float32"`` or ``"bfloat16"`` (autocast).
        compat: ``"official"`` keeps PyTorch's native float32 CPU kernels and layout
            (:func:`d3net.utils.exact_float32`), whose accumulation order is closest to
            NNabla's.
    """

    backend = "torch"

    def __init__(self, model: nn.Module, precision: str = "float32",
                 compat: Optional[str] = None):
        if precision not in ("float32", "bfloat16"):
            raise D3NetError(f"TorchRunner runs float32 or bfloat16, not {precision!r}")
        self.model = model.eval()
        self.precision = precision
        self.compat = compat
        first = next(iter(model.parameters()), None)
        if compat is None and (first is None or first.device.type == "cpu"):
            model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: Tensor) -> Tensor:
        if self.compat == "official":
            context = exact_float32()
        elif self.precision == "bfloat16":
            context = torch.autocast(batch.device.type, dtype=torch.bfloat16)
        else:
            context = contextlib.nullcontext()
        with context:
            return self.model(batch).float()

    def release_memory(self) -> None:
        """Nothing to do: PyTorch frees a call's activations when it returns."""


class PatchNetwork(nn.Module):
    """A music network as exported: ``(batch, channels, bins, frames)`` -> same shape,
    frames a multiple of ``config.frame_multiple`` (the padding of
    :class:`~d3net.models.D3NetMSS`'s ``forward`` is left to the caller, so that the graph
    has no shape-dependent branch and one conversion serves every patch length)."""

    def __init__(self, model: D3NetMSS):
        super().__init__()
        self.network = model

    def forward(self, magnitude: Tensor) -> Tensor:
        return self.network.forward_official_layout(magnitude.transpose(2, 3)).transpose(2, 3)


def traceable(model: D3NetMSS, frames: Optional[int] = None) -> tuple[PatchNetwork, Tensor]:
    """A float32, contiguous-layout CPU :class:`PatchNetwork` copy of ``model`` in eval mode
    (the caller's model is left as is) and an example magnitude of ``frames`` frames
    (default ``patch_frames``) to trace it with.

    Raises:
        D3NetError: ``frames`` is not a positive multiple of ``config.frame_multiple``.
    """
    config = model.config
    frames = config.patch_frames if frames is None else int(frames)
    if frames <= 0 or frames % config.frame_multiple:
        raise D3NetError(f"frames must be a positive multiple of {config.frame_multiple}, "
                         f"got {frames}")
    network = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, config.audio_channels, config.num_bins, frames,
                         generator=torch.Generator().manual_seed(0))
    return PatchNetwork(network).eval(), example


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _signal_stack_kept():
    """Restore the calling thread's alternate signal stack after an OpenVINO call.

    OpenVINO's CPU plugin (2026.4) installs its own alternate signal stack on the calling
    thread and frees that memory when the network is deleted, leaving the thread pointing
    at unmapped memory: the next signal Python handles (Ctrl-C, a DataLoader worker's
    SIGCHLD) then kills the process with SIGSEGV instead of running the handler.
    """
    if _LIBC is None:
        yield
        return
    saved = _SignalStack()
    _LIBC.sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        _LIBC.sigaltstack(ctypes.byref(saved), None)


def convert_openvino(model: D3NetMSS, frames: Optional[int] = None):
    """Convert a music network (see :func:`traceable`) to an ``openvino.Model``, uncached:
    input ``magnitude``, output ``estimate`` as :class:`PatchNetwork`'s, dynamic batch and
    frames; ``frames`` is the traced example's frame count (default: ``patch_frames``).

    Raises:
        D3NetError: OpenVINO is not installed, or the model is not a music network.
    """
    _require_openvino([model])
    import openvino as ov  # optional dependency

    network, example = traceable(model, frames)
    config = model.config
    with torch.no_grad(), warnings.catch_warnings(), _signal_stack_kept():
        # OpenVINO traces the module with TorchScript, which PyTorch flags as deprecated
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        converted = ov.convert_model(
            network, example_input=example,
            input=[ov.PartialShape([-1, config.audio_channels, config.num_bins, -1])])
    converted.inputs[0].get_tensor().set_names({"magnitude"})
    converted.outputs[0].get_tensor().set_names({"estimate"})
    return converted


def openvino_cache_dir(model: D3NetMSS, cache_dir: Optional[PathLike] = None) -> Path:
    """Where the converted ``model`` is cached: ``<cache>/openvino/<fingerprint>-ov<version>``,
    ``<cache>`` being ``cache_dir`` or :func:`d3net.utils.cache_home` (``$D3NET_HOME``)."""
    import openvino as ov  # optional dependency

    version = "".join(c if c.isalnum() or c in ".-" else "_"
                      for c in ov.get_version().split("-")[0])
    root = Path(cache_dir) if cache_dir is not None else cache_home()
    return root / "openvino" / f"{fingerprint(model)[:32]}-ov{version}"


def cached_openvino_model(model: D3NetMSS, cache_dir: Optional[PathLike] = None,
                          progress: bool = False):
    """The converted model, read from the cache or converted and written there.

    The cache entry is a folder (``network.xml`` + ``network.bin``) built in a temporary
    folder and renamed into place, so a crash or a concurrent process never leaves a
    half-written entry. An unwritable cache only costs the conversion next time.
    """
    import openvino as ov  # optional dependency

    entry = openvino_cache_dir(model, cache_dir)
    xml = entry / "network.xml"
    core = ov.Core()
    if xml.is_file() and (entry / "network.bin").is_file():
        with _signal_stack_kept():
            return core.read_model(xml)
    if progress:
        target = getattr(model.config, "target", "network")
        print(f"converting the {target} network to OpenVINO (once; cached in {entry.parent})",
              file=sys.stderr, flush=True)
    converted = convert_openvino(model)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        try:
            with _signal_stack_kept():
                ov.save_model(converted, tmp / "network.xml", compress_to_fp16=False)
            os.replace(tmp, entry)
        except OSError:
            if not xml.is_file():  # not a concurrent writer that got there first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as error:
        print(f"d3net: could not cache the OpenVINO model in {entry.parent} ({error}); it "
              "will be converted again next time", file=sys.stderr)
    return converted


class OpenVINORunner:
    """Runs a music network with OpenVINO on the CPU.

    The network is converted with ``openvino.convert_model`` (traced from PyTorch, dynamic
    batch and frame axes, so every patch length shares one conversion) and cached under
    its :func:`d3net.models.fingerprint` and the OpenVINO version (~25 s per full-size
    network; see :func:`openvino_cache_dir`), so changed weights or a new OpenVINO never
    reuse a stale conversion.

    Args:
        model: a :class:`~d3net.models.D3NetMSS` (left untouched).
        precision: ``"float32"`` (``INFERENCE_PRECISION_HINT=f32``: PyTorch's float32
            output to ~1e-6) or ``"bfloat16"`` (``bf16``).
        cache_dir: the conversion cache's root (see :func:`openvino_cache_dir`).
        progress: say on stderr when a network is converted (the first time: ~25 s).

    Raises:
        D3NetError: OpenVINO is not installed, or the model is not a music network.
    """

    backend = "openvino"

    def __init__(self, model: D3NetMSS, precision: str = "float32",
                 cache_dir: Optional[PathLike] = None, progress: bool = False):
        if precision not in ("float32", "bfloat16"):
            raise D3NetError(f"OpenVINORunner runs float32 or bfloat16, not {precision!r}")
        _require_openvino([model])
        import openvino as ov  # optional dependency

        self.precision = precision
        self.frame_multiple = model.config.frame_multiple
        converted = cached_openvino_model(model, cache_dir, progress=progress)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())}
        with _signal_stack_kept():
            self.compiled = ov.Core().compile_model(converted, "CPU", config)
            self.request = self.compiled.create_infer_request()

    def __call__(self, batch: Tensor) -> Tensor:
        frames = batch.shape[-1]
        pad = -frames % self.frame_multiple
        inputs = batch.detach().to("cpu", torch.float32)
        if pad:
            inputs = torch.nn.functional.pad(inputs, (0, pad))
        with _signal_stack_kept():
            result = self.request.infer([inputs.contiguous().numpy()], share_inputs=True)
        out = torch.from_numpy(result[0])  # infer() returns copies of the outputs
        return out[..., :frames].to(batch.device)

    def release_memory(self) -> None:
        """Free the compiled network's intermediate buffers (reallocated by the next call).

        OpenVINO keeps each compiled network's activation memory between calls: ~0.4 GB per
        full-size network at one 256-frame patch, so four networks would hold ~1.6 GB.
        Releasing it when switching networks bounds that to one network's buffers; a
        release and the reallocation that follows cost little next to a network's run of
        a block of patches (``benchmarks/RESULTS.md``).
        """
        with _signal_stack_kept():
            self.compiled.release_memory()


def create_runner(model: nn.Module, backend: str = "torch", precision: str = "float32",
                  compat: Optional[str] = None,
                  cache_dir: Optional[PathLike] = None,
                  progress: bool = False) -> Runner:
    """A runner for ``model`` with a resolved backend and precision (not ``"auto"``: see
    :func:`resolve_backend` and :func:`resolve_precision`)."""
    if backend == "openvino":
        return OpenVINORunner(model, precision, cache_dir=cache_dir, progress=progress)
    if backend == "torch":
        return TorchRunner(model, precision, compat=compat)
    raise D3NetError(f"create_runner needs a resolved backend, not {backend!r}")
