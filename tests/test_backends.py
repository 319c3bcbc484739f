"""Backends, precisions, fast mode and export, each compared with the float32 PyTorch path.

Reference: the network's plain PyTorch float32 forward (default memory layout, oneDNN).
Tolerances ("relative" = max|a - ref| / max|ref|, as everywhere in the project):

- PyTorch channels-last, float32: 1e-5. Same arithmetic, another blocking of the
  convolutions: measured ~1e-7 (4.5e-8 on a full-size network); the margin covers other
  CPUs' kernels, while a wrong layout or a dropped layer shows as O(1).
- OpenVINO float32 (``INFERENCE_PRECISION_HINT=f32``) and the ONNX / OpenVINO IR exports:
  1e-5, the issue's export criterion; measured 5e-8..1.2e-7 (other float32 kernels and
  summation orders).
- bfloat16 (PyTorch autocast, OpenVINO bf16): below 3e-2, and above zero where the CPU has
  native bfloat16 (so that the reduced precision really ran). bfloat16 keeps 8 significant
  bits (rounding 2**-9 = 2e-3 per operation); measured 1.1e-3..2.4e-3 on full-size
  networks; 3e-2 leaves room for the accumulation over depth without letting a broken
  network (O(1)) pass.
- Separated audio goes through the Wiener filter and the iSTFT, which are linear in the
  estimates up to the filter's ratio: the same tolerances apply to the stems.

OpenVINO tests skip, saying so, when the ``openvino`` package is absent (the ``openvino``
extra, which CI installs); ONNX tests likewise without onnx / onnxruntime.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_MSS
import d3net.utils
from d3net import backends, models
from d3net.backends import OpenVINORunner, TorchRunner
from d3net.cli import main
from d3net.errors import D3NetError
from d3net.separate import Separator

needs_openvino = pytest.mark.skipif(
    not backends.openvino_available(),
    reason="OpenVINO is not installed (pip install 'd3net[openvino]'; CI installs it)")
needs_onnx = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install 'd3net[onnx]')")

FLOAT32_TOLERANCE = 1e-5
BFLOAT16_TOLERANCE = 3e-2


def ov_native_bf16() -> bool:
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and an output bias, so that a freshly built network
    gives a non-trivial output (a fresh one is mostly zeros after its final ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
                module.weight.uniform_(0.5, 1.5, generator=gen)
        model.decode_bias.fill_(0.5)
    return model.eval()


def tiny(target="vocals", seed=0):
    torch.manual_seed(seed)
    return lively(models.create(dict(TINY_MSS, target=target)), seed)


def magnitudes(batch, frames, seed=1, bins=2049):
    return 3 * torch.rand(batch, 2, bins, frames, generator=torch.Generator().manual_seed(seed))


# -- choosing backend and precision ----------------------------------------------------------

@pytest.mark.parametrize("capabilities,expected", [({"avx512_bf16": True}, "bfloat16"),
                                                   ({"amx_bf16": True}, "bfloat16"),
                                                   ({"sve_bf16": True}, "bfloat16"),
                                                   ({"avx512_bf16": False}, "float32"),
                                                   ({}, "float32")])
def test_auto_precision_follows_the_cpus_native_bfloat16(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert backends.resolve_precision("auto", "cpu") == expected
    assert backends.resolve_precision("auto", "cpu", compat="official") == "float32"
    assert backends.resolve_precision("float32", "cpu") == "float32"
    assert backends.resolve_precision("bfloat16", "cpu") == "bfloat16"


def test_precision_errors():
    with pytest.raises(D3NetError, match="unknown precision 'float16'"):
        backends.resolve_precision("float16", "cpu")
    with pytest.raises(D3NetError, match="cannot run in bfloat16"):
        backends.resolve_precision("bfloat16", "cpu", compat="official")
    assert backends.resolve_precision("auto", "meta") == "float32"


def test_auto_backend(monkeypatch):
    network = [tiny()]
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    assert backends.resolve_backend("auto", "cpu", None, network) == "openvino"
    assert backends.resolve_backend("auto", "cuda", None, network) == "torch"
    assert backends.resolve_backend("auto", "cpu", "official", network) == "torch"
    assert backends.resolve_backend("auto", "cpu", None, network + [nn.Identity()]) == "torch"
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    assert backends.resolve_backend("auto", "cpu", None, network) == "torch"


def test_backend_errors(monkeypatch):
    network = [tiny()]
    with pytest.raises(D3NetError, match="unknown backend 'onnx'"):
        backends.resolve_backend("onnx", "cpu", None, network)
    monkeypatch.setattr(backends, "openvino_available", lambda: True)
    with pytest.raises(D3NetError, match="runs on the CPU"):
        backends.resolve_backend("openvino", "cuda", None, network)
    with pytest.raises(D3NetError, match="compat 'official'"):
        backends.resolve_backend("openvino", "cpu", "official", network)
    with pytest.raises(D3NetError, match="D3NetMSS"):
        backends.resolve_backend("openvino", "cpu", None, [nn.Identity()])
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    with pytest.raises(D3NetError, match=r"pip install 'd3net\[openvino\]'"):
        backends.resolve_backend("openvino", "cpu", None, network)


# -- runners against the float32 PyTorch forward ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_reference():
    network = tiny()
    x = magnitudes(3, 24)
    with torch.no_grad():
        ref = network(x)
    assert ref[:, :, :1600].abs().max() > 0.1  # a non-trivial output to compare
    return network, x, ref


def test_torch_runner_channels_last_float32(tiny_reference):
    network, x, ref = tiny_reference
    runner = TorchRunner(tiny(), "float32")
    assert runner.model.full.stem.weight.is_contiguous(memory_format=torch.channels_last)
    out = runner(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert relative(out, ref) < FLOAT32_TOLERANCE


def test_torch_runner_official_keeps_native_layout(tiny_reference):
    network, x, ref = tiny_reference
    runner = TorchRunner(tiny(), "float32", compat="official")
    assert runner.model.full.stem.weight.is_contiguous()
    assert relative(runner(x), ref) < FLOAT32_TOLERANCE


def test_torch_runner_bfloat16(tiny_reference):
    network, x, ref = tiny_reference
    error = relative(TorchRunner(tiny(), "bfloat16")(x), ref)
    assert 0 < error < BFLOAT16_TOLERANCE


@needs_openvino
@pytest.mark.parametrize("frames", [24, 17, 48])  # 17: padded to the frame multiple
def test_openvino_runner_float32(frames):
    network = tiny()
    x = magnitudes(2, frames, seed=frames)
    with torch.no_grad():
        ref = network(x)
    out = OpenVINORunner(network, "float32")(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert relative(out, ref) < FLOAT32_TOLERANCE


@needs_openvino
def test_openvino_runner_bfloat16(tiny_reference):
    network, x, ref = tiny_reference
    error = relative(OpenVINORunner(network, "bfloat16")(x), ref)
    assert error < BFLOAT16_TOLERANCE
    if ov_native_bf16():
        assert error > 0  # bf16 really ran


@needs_openvino
def test_openvino_cache_is_reused_and_keyed_by_weights_and_version(tmp_path, monkeypatch):
    import openvino as ov

    network = tiny()
    assert backends.openvino_cache_dir(network).parent == d3net.utils.cache_home() / "openvino"
    entry = backends.openvino_cache_dir(network, tmp_path)
    assert entry.parent == tmp_path / "openvino"
    assert ov.get_version().split("-")[0] in entry.name
    OpenVINORunner(network, cache_dir=tmp_path)
    assert sorted(p.name for p in entry.iterdir()) == ["network.bin", "network.xml"]
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(backends, "convert_openvino", no_conversion)
    x = magnitudes(1, 16)
    with torch.no_grad():
        ref = network(x)
    assert relative(OpenVINORunner(network, cache_dir=tmp_path)(x), ref) < FLOAT32_TOLERANCE

    changed = tiny()
    with torch.no_grad():
        changed.decode_bias.add_(0.25)
    assert backends.openvino_cache_dir(changed, tmp_path) != entry  # new weights, new entry
    with pytest.raises(AssertionError, match="converted again"):
        OpenVINORunner(changed, cache_dir=tmp_path)
    monkeypatch.setattr(ov, "get_version", lambda: "2099.1.0-1-abc")
    assert backends.openvino_cache_dir(network, tmp_path) != entry  # new OpenVINO, new entry


# -- export ----------------------------------------------------------------------------------

@needs_onnx
def test_onnx_export_matches_pytorch(tmp_path):
    import onnx
    import onnxruntime

    network = tiny()
    path = models.save(network, tmp_path / "vocals.safetensors")
    assert main(["export", "onnx", str(path), "-o", str(tmp_path / "v.onnx"), "-q"]) == 0
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "v.onnx")).metadata_props}
    assert metadata["d3net_fingerprint"] == models.fingerprint(network)
    assert metadata["target"] == "vocals" and metadata["frame_multiple"] == "2"
    session = onnxruntime.InferenceSession(str(tmp_path / "v.onnx"),
                                           providers=["CPUExecutionProvider"])
    for batch, frames in [(1, 16), (3, 48)]:  # dynamic batch and frame axes
        x = magnitudes(batch, frames, seed=frames)
        with torch.no_grad():
            ref = network(x)
        (out,) = session.run(["estimate"], {"magnitude": x.numpy()})
        assert relative(torch.from_numpy(out), ref) < FLOAT32_TOLERANCE


@needs_openvino
def test_openvino_export_of_a_model_folder_matches_pytorch(tmp_path):
    import openvino as ov

    folder = tmp_path / "model"
    networks = {t: tiny(t, seed=i) for i, t in enumerate(("vocals", "bass"))}
    for target, network in networks.items():
        models.save(network, folder / f"{target}.safetensors")
    assert main(["export", "openvino", str(folder), "-o", str(tmp_path / "ir"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "bass.bin", "bass.xml", "vocals.bin", "vocals.xml"]
    core = ov.Core()
    for target, network in networks.items():
        model = core.read_model(tmp_path / "ir" / f"{target}.xml")
        assert model.get_rt_info(["d3net", "target"]).astype(str) == target
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        for batch, frames in [(1, 16), (2, 40)]:
            x = magnitudes(batch, frames, seed=frames)
            with torch.no_grad():
                ref = network(x)
            out = compiled(x.numpy())[0]
            assert relative(torch.from_numpy(out), ref) < FLOAT32_TOLERANCE


@needs_onnx
@pytest.mark.slow
def test_onnx_export_of_a_full_size_network(tmp_path):
    """The official vocals structure (2.97 M parameters) at a short 32-frame patch."""
    import onnxruntime

    torch.manual_seed(0)
    network = lively(models.d3net_mss("vocals"))
    path = models.save(network, tmp_path / "vocals.safetensors")
    from d3net.export import export_models
    (onnx_file,) = export_models(path, "onnx", tmp_path / "out", frames=32)
    assert onnx_file == tmp_path / "out" / "vocals.onnx"
    x = magnitudes(1, 32)
    with torch.no_grad():
        ref = network(x)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"magnitude": x.numpy()})
    assert relative(torch.from_numpy(out), ref) < FLOAT32_TOLERANCE


def test_export_errors(tmp_path):
    from d3net.export import export_models

    with pytest.raises(D3NetError, match="unknown export format"):
        export_models(tmp_path, "tflite", tmp_path / "out")
    with pytest.raises(D3NetError, match="model not found"):
        export_models(tmp_path / "missing.safetensors", "onnx", tmp_path / "out")
    with pytest.raises(D3NetError, match="no separation model"):
        export_models(tmp_path, "onnx", tmp_path / "out")
    seg = models.save(models.d3net_s(), tmp_path / "seg.safetensors")
    with pytest.raises(D3NetError, match="not a music separation model"):
        export_models(seg, "onnx", tmp_path / "out")
    assert main(["export", "onnx", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"),
                 "-q"]) == 2
    model = models.save(tiny(), tmp_path / "vocals.safetensors")
    with pytest.raises(D3NetError, match="positive multiple of 2, got 7"):
        export_models(model, "onnx", tmp_path / "out", frames=7)
    with pytest.raises(D3NetError, match="-o must be a folder"):
        export_models(tmp_path, "onnx", tmp_path / "all.onnx")


# -- the Separator on every path -------------------------------------------------------------

@pytest.fixture(scope="module")
def song():
    gen = torch.Generator().manual_seed(5)
    t = torch.arange(12000) / 44100
    tones = torch.stack([torch.sin(2 * torch.pi * 220 * t), torch.sin(2 * torch.pi * 330 * t)])
    return 0.3 * tones + 0.05 * torch.randn(2, 12000, generator=gen)


PAIR = ("vocals", "bass")  # two targets keep it quick; the Wiener filter adds the residual


def two_tiny():
    return {t: tiny(t, seed=i) for i, t in enumerate(PAIR)}


def separate(song, **options):
    separator = Separator(two_tiny(), **options)
    return separator, separator.separate(song, 44100)


def stems_relative(stems, reference):
    return max(relative(stems[t], reference[t]) for t in reference)


@pytest.fixture(scope="module")
def reference_stems(song):
    _, stems = separate(song, backend="torch", precision="float32")
    return stems


def test_separator_torch_bfloat16_stays_close(song, reference_stems):
    separator, stems = separate(song, backend="torch", precision="bfloat16")
    assert (separator.backend, separator.precision) == ("torch", "bfloat16")
    assert 0 < stems_relative(stems, reference_stems) < BFLOAT16_TOLERANCE


@needs_openvino
def test_separator_openvino_paths(song, reference_stems):
    separator, stems = separate(song, backend="openvino", precision="float32")
    assert (separator.backend, separator.precision) == ("openvino", "float32")
    assert stems_relative(stems, reference_stems) < FLOAT32_TOLERANCE
    separator, stems = separate(song, backend="openvino", precision="bfloat16")
    assert stems_relative(stems, reference_stems) < BFLOAT16_TOLERANCE
    separator = Separator(two_tiny())  # auto: OpenVINO on CPU, native bf16 if the CPU has it
    assert separator.backend == "openvino"
    assert separator.precision == backends.resolve_precision("auto", "cpu")


@needs_openvino
def test_openvino_networks_hand_over_their_activation_memory(song, reference_stems,
                                                             monkeypatch):
    """Each network frees its OpenVINO buffers before the next target's runs (so that four
    full-size networks hold one network's activations, not four), and a network runs the
    same after releasing them."""
    network = tiny()
    x = magnitudes(1, 24)
    runner = OpenVINORunner(network, "float32")
    first = runner(x)
    runner.release_memory()
    assert torch.equal(runner(x), first)

    order = []
    real_call, real_release = OpenVINORunner.__call__, OpenVINORunner.release_memory

    def call(self, batch):
        order.append(("run", id(self)))
        return real_call(self, batch)

    def release(self):
        order.append(("release", id(self)))
        real_release(self)

    monkeypatch.setattr(OpenVINORunner, "__call__", call)
    monkeypatch.setattr(OpenVINORunner, "release_memory", release)
    _, stems = separate(song, backend="openvino", precision="float32")
    assert stems_relative(stems, reference_stems) < FLOAT32_TOLERANCE
    switches = [i for i in range(1, len(order)) if order[i][0] == "run"
                and order[i - 1][0] == "run" and order[i][1] != order[i - 1][1]]
    assert not switches, "a network ran while another still held its buffers"
    assert {runner for kind, runner in order if kind == "release"} == \
        {runner for kind, runner in order if kind == "run"}


def test_fast_mode_is_no_flip_and_no_overlap(song):
    fast = Separator(two_tiny(), mode="fast", backend="torch", precision="float32")
    assert not fast.channel_flip and fast.overlap == 0.0
    explicit = Separator(two_tiny(), channel_flip=False, overlap=0.0, backend="torch",
                         precision="float32")
    a, b = fast.separate(song, 44100), explicit.separate(song, 44100)
    assert all(torch.equal(a[t], b[t]) for t in PAIR)
    assert Separator(two_tiny(), mode="fast", channel_flip=True, backend="torch").channel_flip


class FrameLocal(nn.Module):
    """Each frame's output depends on that frame only: every patching gives the same."""

    def __init__(self, patch):
        super().__init__()
        self.config = type("C", (), {"patch_frames": patch, "out_shift": patch // 2,
                                     "task": "mss", "target": "vocals"})()

    def forward(self, x):
        return x * torch.tensor([0.7, 0.2]).view(1, 2, 1, 1) + x.square() * 0.01


@pytest.mark.parametrize("frames", [1, 255, 256, 700])
@pytest.mark.parametrize("overlap", [0.0, 0.75])
def test_overlaps_cover_every_frame_once_normalised(frames, overlap):
    magnitude = magnitudes(1, frames, bins=64)[0]
    expected = FrameLocal(256)(magnitude[None])[0]
    for patch in (256, 384):
        out = Separator({"vocals": FrameLocal(patch)}, overlap=overlap,
                        channel_flip=False).separate_magnitudes(magnitude)["vocals"]
        assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_mode_and_overlap_errors():
    with pytest.raises(D3NetError, match="unknown mode 'quick'"):
        Separator(two_tiny(), mode="quick")
    with pytest.raises(D3NetError, match=r"overlap must be in \[0, 1\)"):
        Separator(two_tiny(), overlap=1.0)
    with pytest.raises(D3NetError, match="not a multiple of the patch shift"):
        Separator(two_tiny(), overlap=0.3)
    with pytest.raises(D3NetError, match="cannot be combined with fast mode"):
        Separator(two_tiny(), mode="fast", compat="official")


# -- the command line ------------------------------------------------------------------------

def test_cli_backend_precision_and_fast(tmp_path, song):
    import soundfile

    folder = tmp_path / "model"
    for target, network in two_tiny().items():
        models.save(network, folder / f"{target}.safetensors")
    wav = tmp_path / "song.wav"
    soundfile.write(str(wav), song.T.numpy(), 44100, subtype="FLOAT")

    def run(name, *options):
        assert main(["separate", str(wav), "-o", str(tmp_path / name), "--model", str(folder),
                     "--bits", "32", "-q", *options]) == 0
        return {t: soundfile.read(str(tmp_path / name / "song" / f"{t}.wav"))[0]
                for t in PAIR}

    reference = run("ref", "--backend", "torch", "--precision", "float32")
    fast = run("fast", "--fast", "--backend", "torch", "--precision", "float32")
    assert all(np.isfinite(fast[t]).all() and fast[t].shape == reference[t].shape
               for t in PAIR)
    if backends.openvino_available():
        ov32 = run("ov", "--backend", "openvino", "--precision", "float32")
        for t in PAIR:
            assert np.abs(ov32[t] - reference[t]).max() / np.abs(reference[t]).max() < 1e-5
    assert main(["separate", str(wav), "-o", str(tmp_path / "x"), "--model", str(folder),
                 "--backend", "openvino", "--compat", "official", "-q"]) == 2


_SIGNAL_AFTER_OPENVINO = """
import gc, os, signal, time
import torch
from d3net.separate import Separator
separator = Separator.from_pretrained("demo", backend="openvino", progress=False)
separator(torch.zeros(2, 44100))
del separator
gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("interrupted")
"""


@needs_openvino
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fix is Linux-only")
def test_ctrl_c_after_an_openvino_network_is_freed_still_interrupts():
    """OpenVINO leaves the thread's alternate signal stack pointing at freed memory; the
    runner restores it, so Ctrl-C (or a DataLoader worker's SIGCHLD) later is handled,
    not a SIGSEGV of the whole process. (It shares the session's conversion cache.)"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_OPENVINO],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "interrupted"
