"""The one model loader: ``models.load`` / ``load_separation`` / ``load_backbone_weights`` and
the builders' ``weights=`` / ``weights_backbone=``, on every kind of model spec (files,
folders, official .h5, weight names). Downloads are tested in tests/test_weights.py."""
import numpy as np
import pytest
import torch

from conftest import TINY_MSS, TINY_SEG, same_weights, write_backbone_h5
from d3net import models
from d3net.configs import TARGETS, load_config
from d3net.convert import convert_nnabla, load_nnabla
from d3net.errors import D3NetError



@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """A music set folder (vocals, bass), a music file, a segmentation file and run folder."""
    root = tmp_path_factory.mktemp("specs")
    torch.manual_seed(0)
    for target in ("bass", "vocals"):
        models.save(models.create(dict(TINY_MSS, target=target)),
                    root / "mss" / f"{target}.safetensors")
    seg = models.create(TINY_SEG)
    models.save(seg, root / "seg.safetensors")
    models.save(seg, root / "run" / "model.safetensors")
    return root


# ----------------------------------------------------------------------------- load

def test_load_one_network_from_files_and_folders(specs):
    seg = models.load(specs / "seg.safetensors")
    assert seg.config.task == "seg" and not seg.training
    assert same_weights(models.load(specs / "run", task="seg"), seg)
    assert same_weights(models.load(str(specs / "run")), seg)  # the folder's task is found
    vocals = models.load(specs / "mss", task="mss", target="vocals")
    assert vocals.config.target == "vocals"
    assert same_weights(vocals, models.load(specs / "mss" / "vocals.safetensors"))
    with pytest.raises(D3NetError, match=r"holds 2 separation models \(vocals, bass\).*target="):
        models.load(specs / "mss")
    with pytest.raises(D3NetError, match="no model for target.*drums; available: vocals, bass"):
        models.load(specs / "mss", target="drums")
    with pytest.raises(D3NetError, match="holds the bass model, not vocals"):
        models.load(specs / "mss" / "bass.safetensors", target="vocals")


def test_wrong_task_is_one_sentence_for_every_kind_of_spec(specs, official):
    cases = [(specs / "seg.safetensors", "mss", "segmentation"),
             (specs / "run", "mss", "segmentation"),
             (specs / "mss", "seg", "music separation"),
             (specs / "mss" / "vocals.safetensors", "seg", "music separation"),
             (official / "mss" / "bass.h5", "seg", "music separation"),
             ("official-d3net-s", "mss", "segmentation"),
             ("demo", "seg", "music separation")]
    for spec, task, found in cases:
        wanted = {"mss": "music separation", "seg": "segmentation"}[task]
        with pytest.raises(D3NetError) as caught:
            models.load(spec, task=task)
        assert str(caught.value) == f"{spec}: not a {wanted} model (it is a {found} model)"
    with pytest.raises(D3NetError, match="not a music separation model"):
        models.load_separation(specs / "seg.safetensors")


def test_missing_and_foreign_specs(specs, tmp_path):
    with pytest.raises(D3NetError, match="model not found: .*nowhere.*official-mss"):
        models.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D3NetError, match="empty: no model found"):
        models.load(tmp_path / "empty")
    with pytest.raises(D3NetError, match="no separation model found"):
        models.load_separation(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(D3NetError, match="not a model"):
        models.load(tmp_path / "notes.txt")
    with pytest.raises(D3NetError, match="named by a path or a weight name"):
        models.load(42)
    with pytest.raises(D3NetError, match="task must be"):
        models.load(specs / "seg.safetensors", task="audio")


def test_official_h5_is_converted_on_the_fly(official):
    model = models.load(official / "seg" / "d3net_s.h5", task="seg")
    assert same_weights(model, load_nnabla(official / "seg" / "d3net_s.h5"))


# ----------------------------------------------------------------------------- load_separation

def test_load_separation_contract(specs, official, tmp_path):
    loaded = models.load_separation(specs / "mss")
    assert list(loaded) == ["vocals", "bass"]  # official target order, not file order
    assert all(not m.training for m in loaded.values())
    assert list(models.load_separation(specs / "mss", targets=["bass"])) == ["bass"]
    assert list(models.load_separation(specs / "mss" / "bass.safetensors")) == ["bass"]
    with pytest.raises(D3NetError, match="no model for target.*other"):
        models.load_separation(specs / "mss", targets=["vocals", "other"])
    with pytest.raises(D3NetError, match="no model for target.*vocals; available: bass"):
        models.load_separation(specs / "mss" / "bass.safetensors", targets=["vocals"])

    demo = models.load_separation("demo")
    assert list(demo) == list(TARGETS) and demo["bass"].config.name == "mss-small"

    (tmp_path / "unzipped").mkdir()  # an unzipped official archive works as a folder
    (tmp_path / "unzipped" / "drums.h5").symlink_to(official / "mss" / "drums.h5")
    drums = models.load_separation(tmp_path / "unzipped")
    assert list(drums) == ["drums"]
    assert same_weights(drums["drums"], load_nnabla(official / "mss" / "drums.h5"))


def test_weight_names_win_over_local_paths(specs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    models.save(models.create(TINY_SEG), tmp_path / "demo" / "model.safetensors")
    assert list(models.load_separation("demo")) == list(TARGETS)  # the bundled model
    assert models.load("./demo").config.name == "seg-tiny"        # the folder


# ----------------------------------------------------------------------------- backbones

def test_pretrained_backbone_from_safetensors(tmp_path, tiny_seg_yaml):
    source = models.create(tiny_seg_yaml)
    models.save(source, tmp_path / "backbone.safetensors")
    model = models.create(tiny_seg_yaml)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    loaded = models.load_backbone_weights(model, tmp_path / "backbone.safetensors")
    assert loaded and all(k.startswith("backbone.") for k in loaded)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)
    for key, value in head_before.items():
        assert torch.equal(model.head.state_dict()[key], value)  # the head is left alone

    # a bare backbone state dict (no d3net metadata, no "backbone." prefix) works too
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()},
              str(tmp_path / "bare.safetensors"))
    other = models.create(tiny_seg_yaml)
    models.load_backbone_weights(other, tmp_path / "bare.safetensors")
    assert same_weights(other.backbone, source.backbone)

    with pytest.raises(D3NetError, match="does not fit"):
        models.load_backbone_weights(models.d3net_s(), tmp_path / "backbone.safetensors")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(D3NetError, match="not a model"):
        models.load_backbone_weights(model, tmp_path / "x.pt")
    with pytest.raises(D3NetError, match="not a segmentation model"):
        models.load_backbone_weights(model, "demo")
    with pytest.raises(D3NetError, match="goes into a segmentation model"):
        models.load_backbone_weights(models.create(dict(TINY_MSS)), tmp_path / "bare.safetensors")


def test_pretrained_backbone_from_official_h5(official):
    config = load_config(official / "seg" / "tiny.yaml", task="seg")
    config.head = "ocr"  # the backbone goes under any head
    model = models.create(config)
    models.load_backbone_weights(model, official / "seg" / "tiny.h5")
    reference = load_nnabla(official / "seg" / "tiny.h5", official / "seg" / "tiny.yaml",
                            task="seg")
    for key, value in reference.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value)


@pytest.fixture(scope="module")
def d3net_s_backbone(official, tmp_path_factory):
    """An official-format ImageNet backbone file made from the D3Net-S fixture."""
    return write_backbone_h5(official / "seg" / "d3net_s.h5",
                             tmp_path_factory.mktemp("backbone") / "backbone.h5")


def test_backbone_files_are_refused_as_whole_models(official, d3net_s_backbone, tmp_path):
    written = convert_nnabla(d3net_s_backbone, tmp_path / "converted")
    assert written == [tmp_path / "converted" / "model.safetensors"]
    assert models.read_metadata(written[0])["backbone_only"] == "true"
    for spec in (d3net_s_backbone, written[0], tmp_path / "converted"):
        with pytest.raises(D3NetError, match="ImageNet backbone for fine-tuning.*"
                                             "--pretrained-backbone"):
            models.load(spec, task="seg")
    with pytest.raises(D3NetError, match="official-d3net-s-backbone: an ImageNet backbone"):
        models.load("official-d3net-s-backbone")  # refused before any download
    # ... and accepted where a backbone is wanted
    model = models.d3net_s(head="ocr")
    models.load_backbone_weights(model, tmp_path / "converted")
    assert same_weights(model.backbone, load_nnabla(official / "seg" / "d3net_s.h5").backbone)


# ----------------------------------------------------------------------------- builders

def test_builders_take_weights(official, d3net_s_backbone):
    demo = models.load_separation("demo")
    bass = models.d3net_mss("bass", small=True, weights="demo")
    assert same_weights(bass, demo["bass"]) and not bass.training
    with pytest.raises(D3NetError, match="do not fit mss-bass"):
        models.d3net_mss("bass", weights="demo")  # the demo is mss-small

    s = models.d3net_s(weights=official / "seg" / "d3net_s.h5")
    assert same_weights(s, load_nnabla(official / "seg" / "d3net_s.h5"))
    with pytest.raises(D3NetError, match=r"do not fit .*dilation 'multi' vs 'standard'"):
        models.d3net_s(dilation="standard", weights=official / "seg" / "d3net_s.h5")
    with pytest.raises(D3NetError, match="num_classes 19 vs 10"):
        models.d3net_s(num_classes=10, weights=official / "seg" / "d3net_s.h5")
    with pytest.raises(D3NetError, match="not a segmentation model"):
        models.d3net_l(weights="official-mss")  # refused before any download
    with pytest.raises(D3NetError, match="weights or weights_backbone, not both"):
        models.d3net_s(weights="official-d3net-s", weights_backbone="official-d3net-s-backbone")

    torch.manual_seed(0)
    fine_tune = models.d3net_s(num_classes=7, head="ocr", weights_backbone=d3net_s_backbone)
    assert same_weights(fine_tune.backbone, s.backbone)
    assert fine_tune.config.num_classes == 7 and fine_tune.config.head == "ocr"


def test_unknown_weight_names_list_the_known_ones():
    with pytest.raises(D3NetError, match="unknown weights 'official-xl'; known: official-mss"):
        models.get_weights("official-xl")
    assert np.all([models.get_weights(n).name == n for n in models.WEIGHTS])
