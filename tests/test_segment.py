"""Segmenter: whole / sliding-window inference, scales and flips, image modes, files, CLI."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TINY_SEG
from d3net import cli
from d3net.configs import from_dict
from d3net.errors import D3NetError
from d3net.image import find_images
from d3net.models import D3NetSegmentation, save
from d3net.segment import TTA_SCALES, Segmenter
from d3net.utils import parse_scales, parse_size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = D3NetSegmentation(from_dict(TINY_SEG))
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


class Pointwise(nn.Module):
    """A 1x1 'network': its output at a pixel depends on that pixel only, so sliding
    windows must reproduce the whole-image output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 5, 1)
        self.config = from_dict(dict(TINY_SEG, num_classes=5))

    def forward(self, x):
        return self.conv(x)


def test_probabilities_shape_and_sum(model):
    images = torch.randn(2, 3, 37, 70)
    probabilities = Segmenter(model).predict_proba(images)
    assert probabilities.shape == (2, 19, 37, 70)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 37, 70))
    labels = Segmenter(model).predict(images[0])
    assert labels.shape == (37, 70) and labels.dtype == torch.int64
    assert torch.equal(labels, probabilities[0].argmax(0))


def test_whole_mode_is_softmax_of_the_network(model):
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = torch.softmax(model(image), 1)
    torch.testing.assert_close(Segmenter(model).predict_proba(image), expected)


def test_logits_are_log_softmax_for_one_view(model):
    image = torch.randn(1, 3, 40, 64)
    with torch.no_grad():
        expected = torch.log_softmax(model(image), 1)
    torch.testing.assert_close(Segmenter(model).predict_logits(image), expected,
                               rtol=1e-4, atol=1e-4)


def test_tiny_images_are_padded_not_refused(model):
    probabilities = Segmenter(model).predict_proba(torch.randn(1, 3, 9, 17))
    assert probabilities.shape == (1, 19, 9, 17)
    assert torch.isfinite(probabilities).all()


def test_sliding_windows_cover_the_image_within_bounds(model):
    segmenter = Segmenter(model, mode="slide", crop=(40, 64), stride=(24, 50))
    for size in [(100, 130), (40, 64), (30, 20), (41, 65), (200, 64)]:
        cover = torch.zeros(size)
        for top, left, bottom, right in segmenter._windows(size):
            assert 0 <= top < bottom <= size[0] and 0 <= left < right <= size[1]
            assert bottom - top == min(40, size[0]) and right - left == min(64, size[1])
            cover[top:bottom, left:right] += 1
        assert cover.min() >= 1


def test_sliding_window_of_a_pointwise_model_equals_whole():
    net = Pointwise()
    image = torch.randn(2, 3, 70, 90)
    whole = Segmenter(net).predict_proba(image)
    slide = Segmenter(net, mode="slide", crop=(32, 48), stride=(20, 30),
                      batch_size=3).predict_proba(image)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


def test_sliding_window_mode_runs_the_real_model_on_windows(model):
    calls = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    try:
        out = Segmenter(model, mode="slide", crop=(32, 48), stride=(32, 48),
                        batch_size=2).predict_proba(torch.randn(1, 3, 64, 96))
    finally:
        hook.remove()
    assert out.shape == (1, 19, 64, 96)
    assert calls == [(2, 3, 32, 48), (2, 3, 32, 48)]


def test_flip_averaging_is_mirror_symmetric(model):
    image = torch.randn(1, 3, 48, 80)
    segmenter = Segmenter(model, flip=True)
    direct = segmenter.predict_proba(image)
    mirrored = segmenter.predict_proba(image.flip(-1))
    torch.testing.assert_close(mirrored, direct.flip(-1), rtol=0, atol=1e-6)
    # and it really changes something compared with no flipping
    assert not torch.allclose(direct, Segmenter(model).predict_proba(image), atol=1e-4)


def test_multi_scale_averages_the_views(model):
    image = torch.randn(1, 3, 64, 96)
    one = Segmenter(model, scales=(1.0,)).predict_proba(image)
    half = Segmenter(model, scales=(0.5,)).predict_proba(image)
    both = Segmenter(model, scales=(1.0, 0.5)).predict_proba(image)
    torch.testing.assert_close(both, (one + half) / 2)


def test_tta_is_the_papers_setting(model):
    segmenter = Segmenter(model, tta=True)
    assert segmenter.scales == TTA_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert segmenter.flip


@pytest.mark.parametrize("kwargs", [dict(mode="tiles"), dict(scales=()), dict(scales=(0,)),
                                    dict(batch_size=0), dict(crop=(0, 5)),
                                    dict(crop=(32, 32), stride=(40, 8))])
def test_bad_options(model, kwargs):
    with pytest.raises(D3NetError):
        Segmenter(model, **kwargs)


@pytest.mark.parametrize("bad", [torch.randn(1, 4, 32, 32), torch.randn(32, 32),
                                 torch.zeros(1, 3, 32, 32, dtype=torch.uint8)])
def test_bad_tensors(model, bad):
    with pytest.raises(D3NetError):
        Segmenter(model).predict_proba(bad)


def test_parsers():
    assert parse_size("512x1024") == (512, 1024)
    assert parse_size("64") == (64, 64)
    assert parse_scales("0.5,1, 1.5") == (0.5, 1.0, 1.5)
    for text in ("axb", "1x2x3", "0x5"):
        with pytest.raises(D3NetError):
            parse_size(text)
    with pytest.raises(D3NetError):
        parse_scales("1,-2")


# ----------------------------------------------------------------------------- images

def rgb_array(height=40, width=72, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_image_modes_give_consistent_labels(model, tmp_path):
    segmenter = Segmenter(model)
    rgb = rgb_array()
    labels, probabilities = segmenter.predict_image(Image.fromarray(rgb))
    assert labels.shape == (40, 72) and labels.dtype == np.uint8
    assert probabilities.shape == (19, 40, 72)
    np.testing.assert_array_equal(labels, probabilities.argmax(0).numpy())

    rgba = np.concatenate([rgb, np.full((40, 72, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(segmenter.predict_image(Image.fromarray(rgba))[0], labels)

    gray = rgb[..., 0]
    gray_labels = segmenter.predict_image(Image.fromarray(gray))[0]
    wide = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit: 65535 is white
    assert wide.mode.startswith("I;16") or wide.mode == "I"
    np.testing.assert_array_equal(segmenter.predict_image(wide)[0], gray_labels)

    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(segmenter.predict_image(path)[0], labels)


def test_unsupported_mode_is_refused(model):
    image = Image.fromarray(np.zeros((32, 32), np.float32))  # mode "F"
    with pytest.raises(D3NetError, match="mode"):
        Segmenter(model).predict_image(image)


def test_segment_file_writes_label_ids_train_ids_and_overlay(model, tmp_path):
    path = tmp_path / "street.jpg"
    Image.fromarray(rgb_array(50, 90)).save(path)
    files = Segmenter(model).segment_file(path, tmp_path / "out")
    assert files.train_ids == tmp_path / "out" / "street_trainIds.png"
    assert files.label_ids == tmp_path / "out" / "street_labelIds.png"
    assert files.overlay == tmp_path / "out" / "street_overlay.png"
    labels = Image.open(files.train_ids)
    overlay = Image.open(files.overlay)
    assert labels.mode == "L" and labels.size == (90, 50)
    assert overlay.mode == "RGB" and overlay.size == (90, 50)
    assert np.asarray(labels).max() < 19
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "street_labelIds.png", "street_overlay.png",
        "street_trainIds.png"]  # no temporary files left


def test_find_images(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/one.png", "a/sub/two.jpg", "single.png"):
        Image.fromarray(rgb_array(8, 8)).save(tmp_path / name)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    pairs = find_images([tmp_path / "a", tmp_path / "single.png"])
    assert [stem for _, stem in pairs] == ["one", "sub/two", "single"]
    with pytest.raises(D3NetError, match="not found"):
        find_images([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(D3NetError, match="no image files"):
        find_images([tmp_path / "empty"])
    (tmp_path / "other").mkdir()
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "other" / "single.png")
    with pytest.raises(D3NetError, match="both be written"):
        find_images([tmp_path / "single.png", tmp_path / "other" / "single.png"])


# ----------------------------------------------------------------------------- model files

def test_from_pretrained_accepts_file_and_run_folder(model, tmp_path):
    save(model, tmp_path / "run" / "model.safetensors")
    image = torch.randn(1, 3, 32, 48)
    expected = Segmenter(model).predict_proba(image)
    for where in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        torch.testing.assert_close(Segmenter.from_pretrained(where).predict_proba(image), expected)
    (tmp_path / "empty").mkdir()
    with pytest.raises(D3NetError, match="no segmentation model found.*model.safetensors"):
        Segmenter.from_pretrained(tmp_path / "empty")
    with pytest.raises(D3NetError, match="not found"):
        Segmenter.from_pretrained(tmp_path / "nope.safetensors")


def test_from_pretrained_refuses_a_music_model(tmp_path):
    from d3net.models import d3net_mss
    save(d3net_mss(small=True), tmp_path / "vocals.safetensors")
    with pytest.raises(D3NetError, match="not a segmentation model"):
        Segmenter.from_pretrained(tmp_path / "vocals.safetensors")


# ----------------------------------------------------------------------------- CLI

def test_cli_segments_files_and_folders(model, tmp_path, capsys):
    save(model, tmp_path / "run" / "model.safetensors")
    (tmp_path / "in" / "city").mkdir(parents=True)
    Image.fromarray(rgb_array(40, 64, 1)).save(tmp_path / "in" / "city" / "a.png")
    Image.fromarray(rgb_array(33, 47, 2)[..., 0]).save(tmp_path / "gray.png")
    code = cli.main(["segment", str(tmp_path / "in"), str(tmp_path / "gray.png"),
                     "-o", str(tmp_path / "out"), "--model", str(tmp_path / "run"),
                     "--mode", "slide", "--crop", "32x32", "--flip", "--scales", "1,0.75", "-q"])
    assert code == 0
    assert Image.open(tmp_path / "out" / "city" / "a_labelIds.png").size == (64, 40)
    assert Image.open(tmp_path / "out" / "city" / "a_trainIds.png").size == (64, 40)
    assert Image.open(tmp_path / "out" / "gray_overlay.png").size == (47, 33)
    assert capsys.readouterr().out == ""


def test_cli_skips_a_bad_image_and_segments_the_others(model, tmp_path, capsys):
    save(model, tmp_path / "m.safetensors")
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb_array(16, 24, 1)).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").write_text("not an image")
    Image.fromarray(rgb_array(16, 24, 2)).save(tmp_path / "in" / "c.png")
    code = cli.main(["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--model", str(tmp_path / "m.safetensors"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"skipped cannot read image {tmp_path / 'in' / 'b.png'}" in err
    assert "1 of 3 images failed" in err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{stem}_{kind}.png" for stem in "ac"
                             for kind in ("labelIds", "trainIds", "overlay"))


def test_cli_without_model_fetches_official_weights(tmp_path, capsys):
    # the test mirror refuses connections: one line naming the URL and the manual route
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "a.png")
    assert cli.main(["segment", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                     "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot fetch official-d3net-s from http://127.0.0.1:9/semantic-segmentation/" \
           "D3Net-S.h5" in err
    assert "d3net convert nnabla D3Net-S.h5 -o DIR" in err and "--model DIR" in err


@pytest.mark.parametrize("case", ["missing", "not-an-image", "bad-mode", "tta+scales"])
def test_cli_bad_inputs_fail_with_one_line(model, tmp_path, capsys, case):
    save(model, tmp_path / "m.safetensors")
    path = tmp_path / "in.png"
    extra = []
    if case == "not-an-image":
        path.write_text("hello")
    elif case == "bad-mode":
        Image.fromarray(np.zeros((16, 16), np.float32)).save(tmp_path / "in.tif")
        path = tmp_path / "in.tif"
    elif case == "tta+scales":
        Image.fromarray(rgb_array(8, 8)).save(path)
        extra = ["--tta", "--scales", "1,2"]
    code = cli.main(["segment", str(path), "-o", str(tmp_path / "out"),
                     "--model", str(tmp_path / "m.safetensors"), "-q"] + extra)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    if case != "tta+scales":
        assert str(path) in err or path.name in err


def test_cli_refuses_colliding_or_unwritable_outputs_before_loading(tmp_path, capsys):
    """Outputs that would be lost are refused before the model is even looked at (the
    model path here does not exist): a name that differs only in case from another
    (one file on macOS and Windows) and an -o that cannot be created."""
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "in" / "Street.png")
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "street.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cases = [([tmp_path / "in", tmp_path / "street.png"], tmp_path / "out",
              "case-insensitive file systems"),
             ([tmp_path / "street.png"], blocker / "out", "file.txt is a file, not a folder")]
    for inputs, out, message in cases:
        code = cli.main(["segment", *map(str, inputs), "-o", str(out), "--model",
                         str(tmp_path / "no-model.safetensors"), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
