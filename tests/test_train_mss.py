"""Music separation training end to end on a tiny synthetic dataset: generate, train a
tiny config for a few steps (loss falls), resume exactly, the NaN guard, the CLI, and
separating with the run folder."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from d3net import models
from d3net.data import musdb
from d3net.errors import D3NetError
from d3net.train.checkpoint import load_checkpoint
from d3net.train.solver import NonFiniteLossError
from d3net.train import mss as train_mss_module
from d3net.train.mss import MSSHyperParams, train_mss, xavier_init_
from d3net.utils import native_bfloat16

from conftest import TINY_MSS as TINY
# 0.4 s excerpts = 18 STFT frames, 16-frame patches; 2 training tracks x 2 excerpts in
# batches of 2 = 2 steps per epoch; synth-002 held out for validation
FAST = dict(batch_size=2, lr=1e-2, lr_scaling=False, samples_per_track=2, excerpt_seconds=0.4,
            patch_frames=16, validation=("synth-002",), seed=3)
# the same excerpts every epoch (whole 1.5 s tracks, no augmentation), so that the training
# loss of successive epochs can be compared: with random excerpts and gains, two steps
# per epoch are far too noisy for that
SAME_DATA = dict(FAST, excerpt_seconds=1.5, gain_range=(1.0, 1.0), channel_swap=False,
                 random_tracks=False)


@pytest.fixture(scope="module")
def data(synth_musdb):  # the shared synthetic MUSDB18-HQ folder (conftest)
    return synth_musdb


@pytest.fixture(scope="module")
def run_a(data, tiny_mss_yaml, tmp_path_factory):
    """Two epochs on the same data every epoch, with validation."""
    out = tmp_path_factory.mktemp("run-a")
    result = train_mss(data, "vocals", out, tiny_mss_yaml, epochs=2, progress=False, quiet=True,
                       **SAME_DATA)
    return out, result


def _state(path):
    return models.load(path).state_dict()


def test_training_writes_the_run_folder_and_the_loss_falls(run_a, data):
    out, result = run_a
    assert result.epochs == 2 and len(result.train_loss) == 2 and len(result.valid_loss) == 2
    assert all(np.isfinite(result.train_loss + result.valid_loss))
    assert result.train_loss[-1] < result.train_loss[0], result.train_loss
    for name in ("vocals.safetensors", "vocals.last.safetensors", "vocals.ckpt",
                 "input_stats.npz"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "vocals").glob("events.out.tfevents.*"))
    assert not list(out.glob(".*.part"))  # atomic writes left no temp files

    last = models.read_metadata(out / "vocals.last.safetensors")
    best = models.read_metadata(out / "vocals.safetensors")
    assert last["epoch"] == "2"
    assert float(best["valid_loss"]) == pytest.approx(min(result.valid_loss), rel=1e-4)
    model = models.load(out / "vocals.safetensors")
    assert model.config.target == "vocals" and model.config.name == "mss-tiny"

    # the cached input statistics are the training tracks' (synth-002 is held out)
    mean, scale = musdb.load_stats(out / "input_stats.npz")
    train_tracks = [t for t in musdb.list_tracks(data, "train") if t.name != "synth-002"]
    want_mean, want_scale = musdb.compute_input_stats(train_tracks, progress=False)
    assert torch.allclose(mean, want_mean) and torch.allclose(scale, want_scale)

    ckpt = load_checkpoint(out / "vocals.ckpt")
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 2 * 2
    assert ckpt["hparams"]["lr"] == SAME_DATA["lr"] and ckpt["config"]["name"] == "mss-tiny"
    assert ckpt["best_metric"] == pytest.approx(min(result.valid_loss))


def test_resume_continues_exactly(data, tiny_mss_yaml, tmp_path):
    # random excerpts, gains, swaps and track remixing: the resumed run must draw the same
    fast = dict(FAST, samples_per_track=1)  # one step per epoch is enough here
    out_a = tmp_path / "uninterrupted"
    result_a = train_mss(data, "vocals", out_a, tiny_mss_yaml, epochs=2, progress=False, quiet=True,
                         **fast)
    out = tmp_path / "run-b"
    train_mss(data, "vocals", out, tiny_mss_yaml, epochs=1, progress=False, quiet=True, **fast)
    first_epoch = (out / "vocals.ckpt").read_bytes()
    # a larger --epochs continues the run; omitted options keep the run's values
    result = train_mss(data, "vocals", out, resume=True, epochs=2, progress=False, quiet=True)
    assert result.train_loss == result_a.train_loss
    assert result.valid_loss == result_a.valid_loss
    expected = _state(out_a / "vocals.last.safetensors")
    for key, value in _state(out / "vocals.last.safetensors").items():
        assert torch.equal(value, expected[key]), key

    # guards: no silent overwrite, no silent change of the recipe or the architecture
    with pytest.raises(D3NetError, match="pass --resume"):
        train_mss(data, "vocals", out, tiny_mss_yaml, epochs=3, progress=False, quiet=True, **fast)
    with pytest.raises(D3NetError, match="lr = 0.5 differs"):
        train_mss(data, "vocals", out, resume=True, epochs=3, lr=0.5, progress=False, quiet=True)
    with pytest.raises(D3NetError, match="differs from the config"):
        train_mss(data, "vocals", out, "mss-small", resume=True, progress=False, quiet=True)
    # already complete: nothing to do, nothing rewritten
    before = (out / "vocals.ckpt").read_bytes()
    done = train_mss(data, "vocals", out, resume=True, progress=False, quiet=True)
    assert done.epochs == 2 and (out / "vocals.ckpt").read_bytes() == before != first_epoch


@pytest.mark.parametrize("options", [
    {"amp": True}, {"channels_last": True}, {"recompute": "unit"},
    {"amp": True, "recompute": "d2"}, {"channels_last": True, "recompute": "d3"}],
    ids=["amp", "channels-last", "recompute", "amp+recompute", "channels-last+recompute"])
def test_precision_and_layout_runs_resume_exactly(data, tiny_mss_yaml, tmp_path, options):
    """--amp (bfloat16 where this CPU has it natively, else float32), the channels-last
    layout and --recompute, alone and together (channels-last with CPU bfloat16 is refused,
    see test_train_seg): a run continued with --resume equals the uninterrupted one."""
    if options.get("amp") and not native_bfloat16("cpu"):
        pytest.skip("this CPU has no native bfloat16 (--amp trains in float32 here)")
    fast = dict(FAST, samples_per_track=1, **options)
    straight = train_mss(data, "vocals", tmp_path / "a", tiny_mss_yaml, epochs=2, progress=False,
                         quiet=True, **fast)
    train_mss(data, "vocals", tmp_path / "b", tiny_mss_yaml, epochs=1, progress=False, quiet=True,
              **fast)
    resumed = train_mss(data, "vocals", tmp_path / "b", resume=True, epochs=2, progress=False,
                        quiet=True)
    assert resumed.train_loss == straight.train_loss
    assert resumed.valid_loss == straight.valid_loss
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    hparams = load_checkpoint(tmp_path / "b" / "vocals.ckpt")["hparams"]
    assert all(hparams[key] == value for key, value in options.items())
    assert models.recompute_mode(resumed.model) == options.get("recompute", "none")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tiny_mss_yaml, tmp_path,
                                                           monkeypatch):
    out = tmp_path / "run"
    fast = dict(FAST, samples_per_track=1, validation="none")
    train_mss(data, "vocals", out, tiny_mss_yaml, epochs=1, progress=False, quiet=True, **fast)
    saved = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def exploding(trainer, estimate, target):
        return (estimate - target).pow(2).mean() * float("nan")

    monkeypatch.setattr(train_mss_module.MSSTrainer, "loss", exploding)
    with pytest.raises(NonFiniteLossError, match=r"nan \(epoch 2, iteration \d+\).*"
                                                      r"vocals\.ckpt is kept"):
        train_mss(data, "vocals", out, resume=True, epochs=2, progress=False, quiet=True)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == saved


def test_cli_train_then_separate_with_the_run_folder(data, tiny_mss_yaml, tmp_path, capsys):
    from d3net.cli import train as train_cli
    from d3net.separate import Separator

    parser = argparse.ArgumentParser(prog="d3net")
    train_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-run"
    args = parser.parse_args([
        "train", "mss", "--root", str(data), "--target", "drums", "--out", str(out),
        "--config", str(tiny_mss_yaml), "--epochs", "1", "--batch-size", "2", "--lr", "0.01",
        "--excerpt-seconds", "0.4", "--patch-frames", "16", "--samples-per-track", "1",
        "--gain", "none", "--no-channel-swap", "--sync-bn", "off", "--seed", "1"])
    assert args.func(args) == 0
    assert f"weights: {out / 'drums.safetensors'}" in capsys.readouterr().out
    hparams = load_checkpoint(out / "drums.ckpt")["hparams"]
    assert hparams["gain_range"] == [1.0, 1.0] and hparams["channel_swap"] is False
    assert hparams["validation"] == "none" and hparams["epochs"] == 1

    separator = Separator.from_dir(out, wiener_iterations=1)
    assert separator.targets == ["drums"]
    track = musdb.list_tracks(data, "test")[0]
    mixture = torch.from_numpy(track.load("mixture"))
    stems = separator.separate(mixture, track.sample_rate)
    assert stems["drums"].shape == mixture.shape and torch.isfinite(stems["drums"]).all()

    bad = parser.parse_args(["train", "mss", "--root", str(data), "--target", "vocals",
                             "--out", str(tmp_path / "x"), "--gain", "2"])
    with pytest.raises(D3NetError, match="--gain must be LOW,HIGH"):
        bad.func(bad)


def test_bad_inputs_are_clear_errors(data, tiny_mss_yaml, tmp_path):
    with pytest.raises(D3NetError, match="unknown target"):
        train_mss(data, "piano", tmp_path / "r", tiny_mss_yaml)
    with pytest.raises(D3NetError, match="unknown training option"):
        train_mss(data, "vocals", tmp_path / "r", tiny_mss_yaml, learning_rate=1.0)
    with pytest.raises(D3NetError, match="validation track"):
        train_mss(data, "vocals", tmp_path / "r", tiny_mss_yaml, validation=("nope",),
                  progress=False)
    with pytest.raises(D3NetError, match="fewer than patch_frames"):
        train_mss(data, "vocals", tmp_path / "r", tiny_mss_yaml, excerpt_seconds=0.1,
                  patch_frames=16, progress=False)
    with pytest.raises(D3NetError, match="no full batch"):
        train_mss(data, "vocals", tmp_path / "r", tiny_mss_yaml, batch_size=64, samples_per_track=1,
                  excerpt_seconds=0.4, patch_frames=16, progress=False, quiet=True)
    with pytest.raises(D3NetError, match="dataset folder not found"):
        train_mss(tmp_path / "missing", "vocals", tmp_path / "r", tiny_mss_yaml)
    with pytest.raises(D3NetError, match="epochs must be >= 1"):
        MSSHyperParams(epochs=0)


def test_official_init_and_recipe_defaults():
    hp = MSSHyperParams()
    assert (hp.epochs, hp.batch_size, hp.lr, hp.lr_milestones, hp.lr_gamma, hp.weight_decay,
            hp.excerpt_seconds, hp.patch_frames, hp.samples_per_track, hp.gain_range,
            hp.channel_swap, hp.random_tracks) == (50, 6, 1e-3, (40,), 0.1, 1e-4, 6.0, 256, 64,
                                                    (0.75, 1.25), True, True)
    assert MSSHyperParams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
    model = xavier_init_(models.create(TINY))
    assert torch.equal(model.decode_scale, torch.ones_like(model.decode_scale))
    assert torch.equal(model.decode_bias, torch.ones_like(model.decode_bias))
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and not isinstance(m, torch.nn.ConvTranspose2d)]
    conv = max(convs, key=lambda m: m.weight.numel())  # the largest: the least noisy std
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs if m.bias is not None)
    assert conv.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.2)
