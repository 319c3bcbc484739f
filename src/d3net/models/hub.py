"""Fetch, verify, convert and cache the named weights of :mod:`d3net.models.weights`.

On first use of a name, :func:`fetch` downloads the official file (with a progress bar,
through :func:`torch.hub.download_url_to_file`), checks Sony's published hash where there
is one, converts every model with :func:`d3net.convert.load_nnabla` (strict: every
parameter present with the right shape, which is also the check for files without a
published hash), and stores the d3net ``.safetensors`` files with a ``source.json`` record
(URL, SHA-256 of what was fetched, published hash, date, d3net version) in::

    $D3NET_HOME/weights/<name>/        (default: $XDG_CACHE_HOME/d3net, else ~/.cache/d3net)

Nothing half-made is ever left where a later run would pick it up: the work happens in a
temporary folder beside the cache and is renamed into place once complete, under a file
lock, so that processes racing for the same name wait for one download and all succeed.
``D3NET_WEIGHTS_MIRROR=URL`` replaces the official location's prefix (published hashes
are still checked against what the mirror serves).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union
from urllib.error import HTTPError, URLError

import filelock
import torch.hub

from .. import __version__
from ..convert import load_nnabla, unpack_official_zip
from ..errors import D3NetError
from ..utils import cache_home
from .files import save
from .weights import OFFICIAL_PREFIX, Weights, get_weights

HOME_ENV = "D3NET_HOME"  # read by d3net.utils.cache_home
MIRROR_ENV = "D3NET_WEIGHTS_MIRROR"
#: The record written next to the converted files of a fetched weight set.
RECORD = "source.json"
#: Seconds a download may stall (connect or read) before it counts as unreachable.
STALL_TIMEOUT = 60.0

WeightsLike = Union[str, Weights]


def weights_dir() -> Path:
    """Where fetched weight sets live: ``<d3net.utils.cache_home()>/weights``
    (``$D3NET_HOME/weights``, default ``~/.cache/d3net/weights``)."""
    return cache_home() / "weights"


def download_url(weights: WeightsLike) -> Optional[str]:
    """The address :func:`fetch` downloads from: the official one, or the same file under
    ``$D3NET_WEIGHTS_MIRROR`` when set. ``None`` for bundled weights."""
    weights = get_weights(weights)
    if weights.path is None:
        return None
    mirror = os.environ.get(MIRROR_ENV)
    return (mirror.rstrip("/") + "/" + weights.path) if mirror else OFFICIAL_PREFIX + weights.path


def folder(weights: WeightsLike) -> Path:
    """The folder that holds (or will hold) the converted files of ``weights``."""
    weights = get_weights(weights)
    if weights.bundled is not None:
        return Path(__file__).resolve().parents[1] / weights.bundled
    return weights_dir() / weights.name


def model_path(weights: WeightsLike) -> Path:
    """What to pass as ``--model``: the folder of a separation set, the file of a single
    model (``.../official-d3net-s/model.safetensors``)."""
    weights = get_weights(weights)
    where = folder(weights)
    return where if weights.is_set else where / weights.members[0].output


def is_cached(weights: WeightsLike) -> bool:
    """Whether every converted file and the record are in place (bundled: always)."""
    weights = get_weights(weights)
    where = folder(weights)
    complete = all((where / m.output).is_file() for m in weights.members)
    return complete and (weights.bundled is not None or (where / RECORD).is_file())


def fetch(weights: WeightsLike, progress: bool = True) -> Path:
    """Make ``weights`` available locally (downloading, verifying and converting on first
    use only; bundled weights never) and return :func:`model_path`.

    Args:
        weights: a name from :data:`d3net.models.weights.WEIGHTS` or its entry.
        progress: show a download progress bar and what is being fetched (on stderr).

    Raises:
        D3NetError: unknown name; the file cannot be fetched (the message names the URL and
            the manual route); the download fails its hash or does not convert (nothing is
            cached then); the cache folder is not writable.
    """
    weights = get_weights(weights)
    if weights.bundled is not None:
        if not is_cached(weights):
            raise D3NetError(f"the bundled {weights.name} model is missing from "
                             f"{folder(weights)}; reinstall d3net")
        return model_path(weights)
    if is_cached(weights):
        return model_path(weights)
    root = weights_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(root / f"{weights.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            _say(progress, f"waiting for another process to finish fetching {weights.name} "
                           f"(lock {lock.lock_file})")
            lock.acquire()
        try:
            if not is_cached(weights):  # another process may have finished meanwhile
                _fetch_locked(weights, root, progress)
        finally:
            lock.release()
    except OSError as exc:
        raise D3NetError(f"cannot write the weights cache {root} ({exc.strerror or exc}); set "
                         f"{HOME_ENV} to a writable folder") from None
    return model_path(weights)


def _fetch_locked(weights: Weights, root: Path, progress: bool) -> None:
    for leftover in root.glob(f".{weights.name}.*.tmp"):  # from a process that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    url = download_url(weights)
    final = root / weights.name
    work = Path(tempfile.mkdtemp(prefix=f".{weights.name}.", suffix=".tmp", dir=root))
    try:
        download = work / weights.filename
        size = f"about {weights.download_mb:.0f} MB" if weights.download_mb else "size unknown"
        _say(progress, f"downloading {weights.name} ({size}) from {url} into {final}")
        _download(weights, url, download, progress)
        sha256, sha1 = _digests(download)
        nbytes = download.stat().st_size
        if weights.sha1 is not None and sha1 != weights.sha1:
            raise D3NetError(
                f"{url}: the {nbytes} bytes downloaded have SHA-1 {sha1}, not the published "
                f"{weights.sha1} (truncated or altered download); nothing was cached")
        out = work / "converted"
        _convert(weights, url, download, work / "unpacked", out)
        record = {
            "name": weights.name, "url": url, "official_url": weights.url,
            "sha256": sha256, "bytes": nbytes, "published_sha1": weights.sha1,
            "verified_by": ("published SHA-1 and strict conversion" if weights.sha1
                            else "strict conversion (no published hash)"),
            "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "d3net_version": __version__,
            "files": {m.output: {"config": m.config, "from": m.source or weights.filename}
                      for m in weights.members},
        }
        (out / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # an incomplete folder (e.g. files deleted by hand)
            shutil.rmtree(final)
        os.rename(out, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(progress, f"cached {weights.name} in {final}")


def _download(weights: Weights, url: str, dst: Path, progress: bool) -> None:
    try:
        with _stall_timeout(STALL_TIMEOUT):
            torch.hub.download_url_to_file(url, str(dst), progress=progress)
    except (URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise D3NetError(f"cannot fetch {weights.name} from {url} ({_reason(exc)}); "
                         f"{weights.manual_route()}") from None


def _convert(weights: Weights, url: str, download: Path, unpack_dir: Path, out: Path) -> None:
    """Convert every member of ``download`` into ``out`` (strict), or raise one line."""
    try:
        if weights.archive == "zip":
            sources = unpack_official_zip(download, unpack_dir,
                                          [m.source for m in weights.members])
        else:
            sources = {None: download}
        models = {}
        for member in weights.members:
            with warnings.catch_warnings():
                # an ImageNet backbone file's classifier is ignored on purpose
                warnings.simplefilter("ignore")
                models[member.output] = load_nnabla(
                    sources[member.source], member.config,
                    task=weights.task,
                    backbone_only=True if weights.backbone_only else None)
    except D3NetError as exc:
        reason = str(exc).replace(str(download), download.name)
        reason = reason.replace(str(unpack_dir) + os.sep, "")
        raise D3NetError(f"{url}: the download is not the expected {weights.name} weights "
                         f"({reason}); nothing was cached") from None
    for output, model in models.items():
        extra = {"weights": weights.name, "source_url": url}
        if weights.backbone_only:
            extra["backbone_only"] = "true"
        save(model, out / output, extra=extra)


def _digests(path: Path) -> Tuple[str, str]:
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha256.update(block)
            sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


@contextlib.contextmanager
def _stall_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens URLs without a timeout: a default socket timeout (only if none is
    set) turns a silently dropped connection into an error instead of a hang."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        reason = exc.reason
        return getattr(reason, "strerror", None) or str(reason)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)

