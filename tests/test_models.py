"""Model builders: exact official parameter counts, shapes for odd sizes, configs."""
import pytest
import torch
import yaml

from d3net import models
from d3net.configs import (MSSConfig, SegConfig, from_official, load_config, preset,
                           to_dict)
from d3net.errors import D3NetError

# Trainable parameter counts of the official NNabla models
# (shared/fixtures/official/README.md; paper: 9.7M and 38.7M for D3Net-S/L).
OFFICIAL_COUNTS = {
    "d3net-s": 9_685_699, "d3net-l": 38_726_117,
    "mss-vocals": 2_967_407, "mss-drums": 2_873_284, "mss-bass": 2_419_822,
    "mss-other": 2_967_407,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_exact_official_parameter_counts(name):
    model = models.create(name)
    assert models.count_parameters(model) == OFFICIAL_COUNTS[name]


def test_builders_match_presets():
    assert models.count_parameters(models.d3net_s()) == OFFICIAL_COUNTS["d3net-s"]
    assert models.count_parameters(models.d3net_mss("bass")) == OFFICIAL_COUNTS["mss-bass"]
    assert models.d3net_mss("drums").config.target == "drums"
    with pytest.raises(D3NetError, match="unknown target"):
        models.d3net_mss("piano")


def test_dilation_modes_keep_parameter_count():
    for mode in ("standard", "none"):
        assert models.count_parameters(models.d3net_s(dilation=mode)) == OFFICIAL_COUNTS["d3net-s"]


@pytest.mark.parametrize("size", [(64, 128), (67, 93), (33, 47)])
def test_segmentation_any_input_size(size):
    model = models.create("d3net-s").eval()
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 19, *size)
    assert torch.isfinite(y).all()


def test_segmentation_features_and_gradient(official):
    config = load_config(str(official / "seg" / "tiny.yaml"), task="seg")
    model = models.create(config).train()
    x = torch.randn(2, 3, 70, 100)
    feats = model.backbone(x)
    assert [f.shape[1] for f in feats] == [8, 8, 16, 16]
    assert [f.shape[-2:] for f in feats][0] == (18, 25)
    model(x).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_num_classes_and_ocr_head():
    model = models.d3net_s(num_classes=5, head="ocr").eval()
    with torch.inference_mode():
        y = model(torch.randn(1, 3, 64, 96))
        logits, aux = model.forward_train(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 5, 64, 96) and aux.shape == logits.shape


@pytest.mark.parametrize("frames", [1, 16, 37])
def test_mss_shapes_and_high_bins_copied(frames):
    model = models.d3net_mss("vocals", small=True).eval()
    x = torch.rand(2, 2, 2049, frames)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, :, 1600:], x[:, :, 1600:])
    assert (y[:, :, :1600] >= 0).all()


def test_full_mss_model_odd_frames():
    model = models.d3net_mss("bass").eval()
    x = torch.rand(1, 2, 2049, 5)
    with torch.inference_mode():
        assert model(x).shape == x.shape


def test_mss_gradient_reaches_every_parameter():
    model = models.d3net_mss("other", small=True).train()
    x = torch.rand(2, 2, 2049, 19)
    model(x)[:, :, :1600].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mss_rejects_wrong_shape():
    with pytest.raises(ValueError, match="2049"):
        models.d3net_mss("vocals", small=True)(torch.rand(1, 2, 1025, 16))


def test_presets_equal_official_yaml(official):
    for target in ("vocals", "drums", "bass", "other"):
        ours = preset(f"mss-{target}")
        theirs = load_config(official / "mss" / "configs" / f"{target}.yaml")
        assert isinstance(theirs, MSSConfig) and theirs.target == target
        assert to_dict(ours) == to_dict(theirs)
    for name, file in (("d3net-s", "D3Net_S.yaml"), ("d3net-l", "D3Net_L.yaml")):
        theirs = load_config(official / "seg" / "configs" / file)
        theirs.name = name
        assert to_dict(preset(name)) == to_dict(theirs)


def test_yaml_round_trip(tmp_path):
    for name in ("d3net-l", "mss-bass", "mss-small"):
        config = preset(name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(to_dict(config)))
        again = load_config(tmp_path / f"{name}.yaml")
        assert to_dict(again) == to_dict(config)
        assert yaml.safe_load((tmp_path / f"{name}.yaml").read_text())["task"] == config.task


def test_config_errors(tmp_path):
    with pytest.raises(D3NetError, match="unknown config preset"):
        load_config("d3net-xl")
    with pytest.raises(D3NetError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "odd.yaml").write_text("foo: 1\n")
    with pytest.raises(D3NetError, match="cannot tell"):
        load_config(tmp_path / "odd.yaml")
    with pytest.raises(D3NetError, match="missing key"):
        from_official({"n_blocks": [1] * 4, "dens_k": [4] * 4}, task="seg")
    with pytest.raises(D3NetError, match="4 entries"):
        SegConfig(num_layers=(4, 4))
    with pytest.raises(D3NetError, match="divisible"):
        MSSConfig(band_split=(250,), bands=preset("mss-vocals").bands, full=preset("mss-vocals").full)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = models.d3net_mss("drums", small=True).eval()
    path = models.save(model, tmp_path / "m.safetensors")
    again = models.load(path)
    assert to_dict(again.config) == to_dict(model.config)
    x = torch.rand(1, 2, 2049, 8)
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))


def test_load_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(D3NetError, match="without a d3net config"):
        models.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(D3NetError, match="not a safetensors"):
        models.load(tmp_path / "junk.safetensors")
    with pytest.raises(D3NetError, match="not found"):
        models.load(tmp_path / "nothing.safetensors")


def test_fingerprint_follows_weights_and_config():
    a, b = models.d3net_mss("bass"), models.d3net_mss("bass")
    assert models.fingerprint(a) != models.fingerprint(b)          # other random weights
    b.load_state_dict(a.state_dict())
    assert models.fingerprint(a) == models.fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert models.fingerprint(a) != models.fingerprint(b)
    with pytest.raises(D3NetError, match="fingerprint"):
        models.fingerprint(torch.nn.Linear(2, 2))


def test_summary_cli_prints_parameters_and_shapes(capsys):
    from d3net.cli import main

    assert main(["summary", "--config", "mss-small", "--size", "16", "-q"]) == 0
    out = capsys.readouterr().out
    parameters = models.count_parameters(models.create("mss-small"))
    assert f"{parameters:,} trainable" in out and "(1, 2, 2049, 16)" in out
    assert main(["summary", "--size", "6x"]) == 2
    assert "--size must be HEIGHTxWIDTH" in capsys.readouterr().err
