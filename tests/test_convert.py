"""Official NNabla weights: numerical parity, strict name mapping, CLI, bad input.

Parity: every output of the official fixtures (calibrated weights) to a relative error of
1e-4 (``max|ours - ref| / max|ref|``), with PyTorch's default oneDNN kernels (what users
run) and with its native kernels (:func:`d3net.utils.exact_float32`, what
``compat="official"`` runs). D3Net-S comes closest (~6e-5): its calibrated weights amplify
float32 rounding along its depth (fixtures README, "Sensitivity to float32 rounding").
"""
import contextlib
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
import torch

from d3net import models
from d3net.configs import TARGETS
from d3net.convert import load_nnabla, read_nnabla_h5, seg_name_map
from d3net.errors import D3NetError
from d3net.utils import exact_float32

from conftest import write_backbone_h5


KERNELS = {"onednn": contextlib.nullcontext, "native": exact_float32}


def rel_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("target", TARGETS)
def test_mss_parity(official, target, kernels):
    model = load_nnabla(official / "mss" / f"{target}.h5", f"mss-{target}")
    assert not model.training
    x = np.load(official / "mss" / f"{target}_input.npy")     # (batch, frames, ch, bins)
    ref = np.load(official / "mss" / f"{target}_output.npy")
    with torch.inference_mode(), KERNELS[kernels]():
        out = model(torch.from_numpy(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).numpy()
    assert rel_error(out, ref) <= 1e-4
    assert np.array_equal(out[..., 1600:], ref[..., 1600:])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("name,config", [("tiny", "tiny.yaml"), ("d3net_s", "d3net-s")])
def test_segmentation_parity(official, name, config, kernels):
    if config.endswith(".yaml"):
        config = official / "seg" / config
    model = load_nnabla(official / "seg" / f"{name}.h5", config, task="seg")
    x = torch.from_numpy(np.load(official / "seg" / f"{name}_input.npy"))
    with torch.inference_mode(), KERNELS[kernels]():
        features = model.backbone(x)
        probs = torch.softmax(model(x), dim=1).numpy()
    assert rel_error(probs, np.load(official / "seg" / f"{name}_output.npy")) <= 1e-4
    for i, feature in enumerate(features):
        ref = np.load(official / "seg" / f"{name}_feat{i}.npy")
        assert feature.shape == ref.shape
        assert rel_error(feature.numpy(), ref) <= 1e-4


def _names(path):
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return {name: tuple(int(d) for d in shape.split("x")) for name, shape, _ in rows}


def test_d3net_l_name_list_maps_onto_our_model(official):
    names = _names(official / "seg" / "names_d3net_l.txt")
    model = models.d3net_l()
    mapping = seg_name_map(model)
    assert set(mapping) == set(names)
    state = model.state_dict()
    assert len(set(mapping.values())) == len(mapping)
    for name, key in mapping.items():
        assert int(np.prod(names[name])) == state[key].numel(), name
    unfilled = {k for k in state if not k.endswith("num_batches_tracked")} - set(mapping.values())
    assert not unfilled


def test_mss_name_lists_are_covered_exactly(official):
    for target in TARGETS:
        names = _names(official / "mss" / f"names_{target}.txt")
        params = read_nnabla_h5(official / "mss" / f"{target}.h5")
        assert set(params) == set(names)
        assert list(params)[:2] == [f"{target}/in_offset", f"{target}/in_scale"]  # index order


def test_safetensors_round_trip_is_bit_identical(official, tmp_path):
    model = load_nnabla(official / "seg" / "tiny.h5", official / "seg" / "tiny.yaml")
    models.save(model, tmp_path / "tiny.safetensors")
    again = models.load(tmp_path / "tiny.safetensors")
    x = torch.from_numpy(np.load(official / "seg" / "tiny_input.npy"))
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_config_inferred_from_file(official):
    model = load_nnabla(official / "mss" / "drums.h5")
    assert model.config.name == "mss-drums" and model.config.target == "drums"
    assert load_nnabla(official / "seg" / "d3net_s.h5").config.name == "d3net-s"


def test_backbone_only_file(official, tmp_path):
    path = write_backbone_h5(official / "seg" / "d3net_s.h5",
                             tmp_path / "D3Net-S-pretrained-backbone.h5")
    with h5py.File(path, "a") as f:  # plus an ImageNet classifier, which has no counterpart
        index = len(read_nnabla_h5(path))
        f.create_dataset("fc/W", data=np.zeros((10, 128), np.float32)).attrs["index"] = index
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="fc/W"):
        model = load_nnabla(path, "d3net-s")
    reference = load_nnabla(official / "seg" / "d3net_s.h5", "d3net-s")
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, reference.state_dict()[key]), key
    # the head keeps its fresh initialisation
    assert not torch.equal(model.head.classifier.weight, reference.head.classifier.weight)
    assert torch.equal(model.head.fuse.norm.running_var, torch.ones(264))


def test_backbone_file_without_scope(official, tmp_path):
    full = read_nnabla_h5(official / "seg" / "d3net_s.h5")
    path = tmp_path / "unscoped.h5"
    with h5py.File(path, "w") as f:
        for index, (name, value) in enumerate(
                (n, v) for n, v in full.items() if n.startswith("backbone/")):
            f.create_dataset(name[len("backbone/"):], data=value).attrs["index"] = index
    model = load_nnabla(path)  # preset inferred, backbone-only detected
    reference = load_nnabla(official / "seg" / "d3net_s.h5", "d3net-s")
    assert torch.equal(model.backbone.stem.conv1.weight, reference.backbone.stem.conv1.weight)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "d3net.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_cli_converts_music_folder_for_separate(official, tmp_path):
    result = run_cli("convert", "nnabla", official / "mss", "-o", tmp_path / "model", "-q")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert written == [f"{t}.safetensors" for t in sorted(TARGETS)]
    bass = models.load(tmp_path / "model" / "bass.safetensors")
    assert bass.config.target == "bass" and bass.config.patch_frames == 384


def test_cli_bad_inputs_write_nothing(official, tmp_path):
    not_h5 = tmp_path / "weights.h5"
    not_h5.write_text("hello")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((official / "seg" / "tiny.h5").read_bytes()[:4000])
    out = tmp_path / "out.safetensors"
    cases = [
        (not_h5, "d3net-s", "not a readable NNabla .h5"),
        (truncated, "d3net-s", "truncated.h5"),
        (official / "mss" / "drums.h5", "d3net-s", "looks like mss-drums"),
        (official / "mss" / "drums.h5", "mss-vocals", "holds the drums model"),
        (tmp_path / "missing.h5", "d3net-s", "not found"),
    ]
    for src, config, message in cases:
        result = run_cli("convert", "nnabla", src, "-o", out, "--config", config)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert not out.exists()
        assert not list(tmp_path.glob(".out.safetensors*"))


def test_official_zip_and_folder_outputs_make_model_folders(official, tmp_path, capsys):
    """The manual route of a failed download: 'd3net convert nnabla FILE -o DIR', then
    '--model DIR', for the music archive and a single segmentation file alike."""
    import zipfile

    from d3net.cli import main

    archive = tmp_path / "d3net-mss.zip"
    with zipfile.ZipFile(archive, "w") as z:  # members inside a folder are found too
        z.write(official / "mss" / "bass.h5", "d3net-mss/bass.h5")
        z.writestr("d3net-mss/README.txt", "not a model")
    assert main(["convert", "nnabla", str(archive), "-o", str(tmp_path / "mss"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "mss").iterdir()) == ["bass.safetensors"]
    assert list(models.load_separation(tmp_path / "mss")) == ["bass"]

    assert main(["convert", "nnabla", str(official / "seg" / "tiny.h5"), "-o",
                 str(tmp_path / "seg"), "--config", str(official / "seg" / "tiny.yaml"),
                 "--task", "seg", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["model.safetensors"]
    assert models.load(tmp_path / "seg", task="seg").config.task == "seg"
    assert "backbone_only" not in models.read_metadata(tmp_path / "seg" / "model.safetensors")

    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[:5000])
    assert main(["convert", "nnabla", str(truncated), "-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a complete zip archive" in err
    assert not (tmp_path / "bad").exists()
