import dataclasses
import hashlib
import http.server
import os
import signal
import shutil
import threading
import zipfile
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from d3net.configs import TARGETS
from d3net.convert import read_nnabla_h5
from d3net.data.synth_music import generate_dataset
from d3net.models import weights as registry

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "fixtures" / "official"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def d3net_home(tmp_path_factory):
    """d3net's cache (OpenVINO conversions, ...) in a temporary folder shared by the session,
    never the user's ~/.cache/d3net."""
    previous = os.environ.get("D3NET_HOME")
    os.environ["D3NET_HOME"] = str(tmp_path_factory.mktemp("d3net-home"))
    yield Path(os.environ["D3NET_HOME"])
    if previous is None:
        os.environ.pop("D3NET_HOME", None)
    else:
        os.environ["D3NET_HOME"] = previous


#: An address where nothing listens: a test that forgets --model fails at once, offline.
UNREACHABLE_MIRROR = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, d3net_home):
    """Every test starts with no fetched weights and a weights mirror that refuses
    connections, so the suite never downloads (named weights fail fast, with the
    manual-route message), and a D3NET_MODEL set in the developer's shell changes nothing."""
    shutil.rmtree(d3net_home / "weights", ignore_errors=True)
    monkeypatch.setenv("D3NET_WEIGHTS_MIRROR", UNREACHABLE_MIRROR)
    monkeypatch.delenv("D3NET_MODEL", raising=False)


@pytest.fixture(autouse=True)
def _restore_sigchld():
    """Undo the SIGCHLD handler that a DataLoader with workers installs for the rest of the
    process: with it, a later subprocess (ffmpeg) exiting has killed the test process with
    SIGSEGV on CI's machine (the kernel failing to deliver the signal), far from its cause."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)


@pytest.fixture(scope="session")
def official() -> Path:
    """The official NNabla fixture folder; tests needing it skip (with the reason) if absent."""
    if not OFFICIAL.is_dir():
        pytest.skip(f"official fixtures not found at {OFFICIAL} (../shared beside the repo)")
    return OFFICIAL


# A D3Net MSS with one-layer D3 blocks: the official structure (two bands + full band,
# encoder-decoders, final D2 block, gated output) at ~10k parameters. Shared by the
# training, evaluation and DDP tests.
TINY_MSS = {
    "task": "mss", "target": "vocals", "name": "mss-tiny", "band_split": [256],
    "valid_bins": 1600,
    "bands": [{"init_features": 4, "num_layers": [1, 1, 1], "growth_rate": [4, 4, 4],
               "num_blocks": [1, 1, 1]},
              {"init_features": 4, "num_layers": [1, 1, 1], "growth_rate": [2, 2, 2],
               "num_blocks": [1, 1, 1]}],
    "full": {"init_features": 4, "num_layers": [1, 1, 1], "growth_rate": [4, 4, 4],
             "num_blocks": [1, 1, 1]},
    "final_growth_rate": 4, "final_num_layers": 2,
    "patch_frames": 16, "out_shift": 8,
}

# A D3Net segmentation model with one two-layer D2 block per scale (~20k parameters, 19
# classes). Shared by the segmentation, training, loading and CLI tests.
TINY_SEG = {
    "task": "seg", "name": "seg-tiny", "num_init_features": 8, "num_layers": [2, 2, 2, 2],
    "num_blocks": [1, 1, 1, 1], "growth_rate": [6, 6, 6, 6], "compression": [1.0] * 4,
    "out_layers": [2, 2, 2, 2], "feature_channels": [8, 8, 8, 8], "transition_factor": 1,
    "head_channels": 16,
}


@pytest.fixture(scope="session")
def synth_musdb(tmp_path_factory) -> Path:
    """A synthetic MUSDB18-HQ folder: three training songs and one test song of 1.5 s."""
    root = tmp_path_factory.mktemp("synth-musdb")
    generate_dataset(root, subsets={"train": 3, "test": 1}, seconds=1.5, seed=5, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_mss_yaml(tmp_path_factory) -> Path:
    """:data:`TINY_MSS` as a YAML config file."""
    path = tmp_path_factory.mktemp("configs") / "mss-tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_MSS))
    return path


@pytest.fixture(scope="session")
def tiny_seg_yaml(tmp_path_factory) -> Path:
    """:data:`TINY_SEG` as a YAML config file."""
    path = tmp_path_factory.mktemp("configs") / "seg-tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SEG))
    return path


# ----------------------------------------------------------------------------- weights server
# Official weight files built from the fixtures, served from 127.0.0.1 (test_weights.py,
# test_cli_model.py): nothing in the suite reaches beyond this machine.

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> file); ``server.mode == "truncated"`` announces
    the full length but sends half and closes; ``server.gate`` holds responses back."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server = self.server
        server.requests.append(self.path)
        path = server.files.get(self.path)
        if path is None:
            self.send_error(404)
            return
        if server.gate is not None:
            server.gate.wait(timeout=60)
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.mode == "truncated":
            body = body[: len(body) // 2]
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


class WeightsServer:
    def __init__(self, files):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.requests = files, []
        self.httpd.mode, self.httpd.gate = "normal", None
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    requests = property(lambda self: self.httpd.requests)

    def set(self, mode="normal", gate=None):
        self.httpd.mode, self.httpd.gate = mode, gate

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


def same_weights(a, b) -> bool:
    """Whether two modules hold equal state dicts (same keys, bit-equal tensors)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def write_backbone_h5(full_h5, path):
    """An ImageNet-style backbone file: only the ``backbone/`` parameters of ``full_h5``."""
    params = read_nnabla_h5(full_h5)
    with h5py.File(path, "w") as f:
        index = 0
        for name, value in params.items():
            if name.startswith("backbone/"):
                f.create_dataset(name, data=value).attrs["index"] = index
                index += 1
    return path


@pytest.fixture(scope="session")
def served(official, tmp_path_factory):
    """URL path (under the official prefix) -> file, built from the official fixtures."""
    root = tmp_path_factory.mktemp("served")
    archive = root / "d3net-mss.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for target in TARGETS:
            z.write(official / "mss" / f"{target}.h5", f"{target}.h5")
    backbone = write_backbone_h5(official / "seg" / "d3net_s.h5", root / "backbone.h5")
    return {"/mss/d3net-mss.zip": archive,
            "/semantic-segmentation/D3Net-S.h5": official / "seg" / "d3net_s.h5",
            "/semantic-segmentation/D3Net-S-pretrained-backbone.h5": backbone}


@pytest.fixture
def server(served, monkeypatch):
    """The server, with the mirror pointing at it and official-mss's published SHA-1 set
    to the served zip's."""
    sha1 = hashlib.sha1(served["/mss/d3net-mss.zip"].read_bytes()).hexdigest()
    monkeypatch.setitem(registry.WEIGHTS, "official-mss",
                        dataclasses.replace(registry.WEIGHTS["official-mss"], sha1=sha1))
    srv = WeightsServer(served)
    monkeypatch.setenv("D3NET_WEIGHTS_MIRROR", srv.url)
    yield srv
    srv.stop()
