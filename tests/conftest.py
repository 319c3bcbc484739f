import os
from pathlib import Path

import pytest
import torch

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
