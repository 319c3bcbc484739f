"""Small shared helpers: atomic file writes with the usual file modes, output checks, the
cache folder, device resolution, DDP unwrapping, exact float32 kernels, sizes and scales
given as text or numbers."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Tuple, Union

import soundfile
import torch
from safetensors import SafetensorError
from torch import nn

from .errors import D3NetError

PathLike = Union[str, os.PathLike]
Size = Tuple[int, int]

_NEW_FILE_MODE = 0o666  # the kernel subtracts the umask (and applies default ACLs)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _create_temporary(path: Path, suffix: str) -> Tuple[Path, int]:
    """An empty new file next to ``path`` and its permission bits: ``0o666`` less the
    umask, as the kernel sets them for ``open(name, "w")`` (not ``tempfile.mkstemp``'s
    private ``0o600``)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}.part"
        try:
            fd = os.open(candidate, _CREATE_FLAGS, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        try:
            return candidate, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"no free temporary name next to {path}")


def cache_home() -> Path:
    """d3net's cache folder (fetched weights, OpenVINO conversions): ``$D3NET_HOME`` if set,
    else ``$XDG_CACHE_HOME/d3net``, else ``~/.cache/d3net`` (torch.hub's conventions)."""
    home = os.environ.get("D3NET_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "d3net"


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a clear error for unusable devices.

    Raises:
        D3NetError: an unknown device name, or CUDA asked for where there is none.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise D3NetError(f"invalid device {device!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise D3NetError(f"device {device} requested but CUDA is not available")
    return device


#: ``torch.cpu.get_capabilities()`` flags of CPUs that compute bfloat16 natively (x86, ARM).
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bfloat16(device: Union[str, torch.device]) -> bool:
    """Whether ``device`` computes bfloat16 natively rather than emulating it (where
    bfloat16 is no faster than float32), from PyTorch's own capability queries.

    CPU: AVX-512 BF16 or AMX (x86), BF16 or SVE BF16 (ARM). CUDA: a GPU with native
    bfloat16 (Ampere and newer). Other devices: False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available()
                    and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return any(capabilities.get(flag, False) for flag in NATIVE_BF16_CPU_FEATURES)
    return False


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    If the body raises (or the process dies), ``path`` is left untouched: the old file or
    nothing, never a half-written one. ``suffix`` defaults to the target's, for libraries
    that infer a format from the extension. As with ``cp``, a new file gets ``0o666`` less
    the umask and a replaced file keeps its permission bits (the owner becomes the writer).

    Raises:
        D3NetError: from :func:`write_error`, when writing fails (disk full, device gone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path, new_file_mode = _create_temporary(path, path.suffix if suffix is None else suffix)
    try:
        yield tmp_path
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            mode = new_file_mode
        # Set even for a new file: some writers (safetensors) replace the temporary file
        # with their own private (0o600) one.
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(error, WRITE_ERRORS) or (isinstance(error, RuntimeError)
                                               and _disk_full(path)):
            raise write_error(path, error) from None
        raise


#: What writers raise when the disk fills up or goes away: OSError, soundfile's errors
#: (libsndfile says "System error."), safetensors' own error type. (torch.save raises a
#: plain RuntimeError: translated only when the disk is full, so that bugs stay visible.)
WRITE_ERRORS = (OSError, soundfile.SoundFileError, SafetensorError)


def _disk_full(path: PathLike) -> bool:
    with contextlib.suppress(OSError):
        return shutil.disk_usage(_nearest_existing(Path(path))).free < 2 ** 20
    return False


def write_error(path: PathLike, error: BaseException) -> D3NetError:
    """One line for a write to ``path`` that failed part-way (a full disk, a device gone),
    instead of the writing library's traceback."""
    if _disk_full(path):
        reason = "no space left on the device"
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = " ".join(str(error).split()) or type(error).__name__
    return D3NetError(f"cannot write {path}: {reason}")


def check_writable(*folders: PathLike) -> None:
    """Check, before long work starts, that files can be written into every folder.

    A folder need not exist yet: its nearest existing ancestor gets one empty probe file,
    created and removed at once (each distinct folder once). Creating a file is the only
    reliable test: permission bits say nothing about read-only file systems, ACLs or root.

    Raises:
        D3NetError: naming the folder and the reason (read-only file system, permission
            denied, a file standing where a folder must be, ...).
    """
    probed = set()
    for folder in folders:
        folder = Path(folder)
        existing = _nearest_existing(folder)
        if not existing.is_dir():
            raise D3NetError(f"cannot write into {folder}: {existing} is a file, not a folder")
        key = os.path.realpath(existing)
        if key in probed:
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".d3net-write-test-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            where = "" if existing == folder else f" (in {existing})"
            raise D3NetError(f"cannot write into {folder}: {reason}{where}") from None
        probed.add(key)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path at worst)."""
    current = path
    while True:
        try:
            os.stat(current)
            return current
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            raise D3NetError(f"cannot write into {path}: {current}: "
                             f"{error.strerror or error}") from None
        if current.parent == current:
            return current
        current = current.parent


def check_unique_outputs(pairs: Iterable[Tuple[PathLike, str]],
                         hint: str = "rename one, or write them in separate runs with "
                                     "different output folders") -> None:
    """Refuse, before any work, two inputs (``pairs``: ``(input file, output name)``) that
    would be written under one output name; ``hint`` (what to do) ends the message.

    Names that differ only in letter case collide too (case-insensitive file systems of
    macOS and Windows). The same input given twice is not a collision.

    Raises:
        D3NetError: naming both inputs and the output name.
    """
    seen: dict[str, Tuple[Path, str, str]] = {}
    for source, name in pairs:
        source = Path(source)
        identity = os.path.realpath(source)
        first, first_name, first_identity = seen.setdefault(name.casefold(),
                                                            (source, name, identity))
        if first_identity == identity:
            continue
        shared = name if first_name == name else \
            f"{first_name} and {name} (one name on case-insensitive file systems)"
        raise D3NetError(f"{first} and {source} would both be written as {shared}; {hint}")


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Run CPU convolutions through PyTorch's native (im2col + BLAS) kernels, not oneDNN.

    Used by ``compat="official"`` (:class:`d3net.separate.Separator`) and the benchmarks;
    not needed for parity: both kernels reproduce every official output to 1e-4 relative
    (tests/test_convert.py runs both).
    """
    with warnings.catch_warnings():
        # torch warns about oneDNN TF32 on Intel GPUs whenever these flags are set
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def parse_size(value: Union[str, int, Sequence[int]], name: str = "size") -> Size:
    """``"512x1024"`` (height x width), ``"512"`` or ``512`` (square), or ``(512, 1024)``
    -> ``(512, 1024)``.

    Raises:
        D3NetError: naming ``name``, for anything else or a side below 1.
    """
    values = value
    if isinstance(value, str):
        try:
            values = [int(part) for part in value.lower().replace(",", "x").split("x")]
        except ValueError:
            values = None
    if isinstance(values, int):
        values = [values]
    if isinstance(values, (list, tuple)) and len(values) == 1:
        values = list(values) * 2
    try:
        height, width = (int(v) for v in values)
    except (TypeError, ValueError):
        raise D3NetError(f"{name} must be HEIGHTxWIDTH (e.g. 512x1024), a side or (height, "
                         f"width), got {value!r}") from None
    if height < 1 or width < 1:
        raise D3NetError(f"{name} must be positive, got {height}x{width}")
    return height, width


def parse_scales(value: Union[str, Sequence[float]], name: str = "scales"
                 ) -> Tuple[float, ...]:
    """``"0.5,0.75,1.0"`` or a sequence of numbers -> ``(0.5, 0.75, 1.0)``.

    Raises:
        D3NetError: naming ``name``, for an empty list or a scale that is not a positive
            finite number.
    """
    parts = [s for s in value.split(",") if s.strip()] if isinstance(value, str) else value
    try:
        scales = tuple(float(s) for s in parts)
    except (TypeError, ValueError):
        raise D3NetError(f"{name} must be comma-separated numbers, got {value!r}") from None
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise D3NetError(f"{name} must be positive numbers, got {list(scales)}")
    return scales
