"""Cityscapes and folder datasets, the label-id table, image normalisation, transforms
and the palette helpers."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from d3net.data.cityscapes import (CityscapesDataset, EvalTransform, ImageFolderDataset,
                                   TrainTransform)
from d3net.errors import D3NetError
from d3net.image import (CITYSCAPES_MEAN, CITYSCAPES_STD, LABEL_ID_TO_TRAIN_ID, image_to_array,
                         label_ids_to_train_ids, normalize_image, train_ids_to_label_ids)
from d3net.palette import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, colorize, overlay

MEAN = torch.tensor(CITYSCAPES_MEAN).view(3, 1, 1)
STD = torch.tensor(CITYSCAPES_STD).view(3, 1, 1)


def save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_cityscapes(root: Path, split: str = "train", cities=("aachen", "bochum"),
                    per_city: int = 2, size=(12, 20), label_kind: str = "trainIds",
                    seed: int = 0) -> dict:
    """A tiny tree; returns {image name: train-id array}."""
    rng = np.random.default_rng(seed)
    labels = {}
    for city in cities:
        for k in range(per_city):
            name = f"{city}_{k:06d}_000019"
            save(rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                 root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            train_ids = rng.integers(0, 19, size, dtype=np.uint8)
            train_ids[0, :3] = 255
            labels[f"{name}_leftImg8bit.png"] = train_ids
            folder = root / "gtFine" / split / city
            if label_kind == "trainIds":
                save(train_ids, folder / f"{name}_gtFine_labelTrainIds.png")
            elif label_kind == "labelIds":
                ids = train_ids_to_label_ids(train_ids)
                ids[0, :3] = [0, 9, 29]  # unlabeled, parking, caravan: all ignored
                save(ids, folder / f"{name}_gtFine_labelIds.png")
    return labels


# ------------------------------------------------------------------- label ids

def test_label_id_table_matches_published_definitions():
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    assert LABEL_ID_TO_TRAIN_ID == expected
    mapped = label_ids_to_train_ids(np.arange(256))
    assert mapped.dtype == np.uint8
    for label_id in range(256):
        assert mapped[label_id] == expected.get(label_id, 255)
    train_ids = np.array([[0, 5, 18], [255, 10, 13]], dtype=np.uint8)
    assert np.array_equal(label_ids_to_train_ids(train_ids_to_label_ids(train_ids)), train_ids)
    assert train_ids_to_label_ids(np.array([255]))[0] == 0


def test_label_id_table_agrees_with_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels",
                                 reason="optional cityscapesscripts package not installed")
    for label in labels.labels:
        if 0 <= label.id < 256:
            train_id = label.trainId if label.trainId not in (-1, 255) else 255
            assert label_ids_to_train_ids(np.array([label.id]))[0] == train_id, label.name


# ----------------------------------------------------------------------- images

def test_normalize_rgb_values():
    array = np.zeros((2, 3, 3), dtype=np.uint8)
    array[0, 1] = (10, 200, 255)
    x = normalize_image(Image.fromarray(array))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = (torch.tensor([10.0, 200.0, 255.0]) - MEAN.view(3)) / STD.view(3)
    assert torch.allclose(x[:, 0, 1], expected)
    assert torch.allclose(x[:, 1, 1], -MEAN.view(3) / STD.view(3))


def test_image_modes_are_converted_or_refused():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    reference = image_to_array(Image.fromarray(rgb))
    assert np.array_equal(reference, rgb.astype(np.float32))

    rgba = np.concatenate([rgb, rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)], axis=2)
    assert np.array_equal(image_to_array(Image.fromarray(rgba)), reference)  # alpha dropped
    assert np.array_equal(image_to_array(rgba), reference)

    grayscale = image_to_array(Image.fromarray(gray))
    assert grayscale.shape == (5, 7, 3)
    assert all(np.array_equal(grayscale[..., c], gray) for c in range(3))
    assert np.array_equal(image_to_array(gray[..., None]), grayscale)

    sixteen = (gray.astype(np.uint16) * 257)
    assert Image.fromarray(sixteen).mode.startswith("I;16")
    assert np.allclose(image_to_array(Image.fromarray(sixteen)), grayscale)
    assert np.allclose(image_to_array(sixteen), grayscale)

    palette = Image.fromarray(rgb).quantize(colors=16)
    assert palette.mode == "P"
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32)
    assert np.array_equal(image_to_array(palette), expected)

    with pytest.raises(D3NetError, match="mode 'F'"):
        image_to_array(Image.fromarray(gray.astype(np.float32)))
    with pytest.raises(D3NetError, match="uint8 or uint16"):
        image_to_array(rgb.astype(np.float32))
    with pytest.raises(D3NetError, match="shape"):
        image_to_array(np.zeros((4, 4, 2), dtype=np.uint8))


def test_sixteen_bit_png_round_trip(tmp_path):
    values = np.array([[0, 65535], [257 * 100, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    array = image_to_array(Image.open(tmp_path / "deep.png"))
    assert array[0, 1, 0] == pytest.approx(255.0) and array[1, 0, 2] == pytest.approx(100.0)


# ------------------------------------------------------------------- transforms

def blocky_scene(height=64, width=96, seed=0):
    """An image whose colours are the palette colours of its label, in 8x8 blocks."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 19, (height // 8, width // 8)), np.ones((8, 8), dtype=np.int64))
    label = label.astype(np.uint8)
    return CITYSCAPES_PALETTE[label], label


def test_train_transform_shapes_and_alignment():
    image, label = blocky_scene()
    transform = TrainTransform(crop=(40, 56), scale_range=(0.5, 2.0),
                               generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        x, y = transform(Image.fromarray(image), label)
        assert x.shape == (3, 40, 56) and x.dtype == torch.float32
        assert y.shape == (40, 56) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(19)) | {255}
        # Where a pixel and its 3x3 neighbours share one class (not padding), the image
        # holds that class's colour: image and label were scaled/cropped/flipped together.
        colours = x * STD + MEAN
        padded = torch.nn.functional.pad(y[None, None].float(), (1, 1, 1, 1), value=-1)[0, 0]
        same = torch.ones_like(y, dtype=torch.bool)
        for dy in range(3):
            for dx in range(3):
                same &= padded[dy:dy + 40, dx:dx + 56] == y
        inside = same & (y != 255)
        assert inside.sum() > 100
        expected = torch.from_numpy(CITYSCAPES_PALETTE.astype(np.float32))[y[inside]].T
        assert torch.allclose(colours[:, inside], expected, atol=1.0)


@pytest.mark.parametrize("scaled, top, left, window", [
    ((45, 70), 3, 9, (32, 40)),     # downscale
    ((101, 150), 60, 100, (40, 50)),  # upscale, window at the far corner
    ((50, 40), 20, 0, (40, 56)),    # window runs past the bottom and right: padding
    ((64, 96), 5, 7, (40, 56)),     # no rescale
])
def test_window_resampling_equals_full_resize_then_crop(scaled, top, left, window):
    image, label = blocky_scene(64, 96, seed=3)
    image = image.astype(np.float32) + np.random.default_rng(0).normal(0, 20, image.shape)
    pixels = torch.from_numpy(np.clip(image, 0, 255).astype(np.float32).transpose(2, 0, 1).copy())
    target = torch.from_numpy(label.astype(np.int64))
    transform = TrainTransform(crop=window)
    x, y = transform._resampled_window(pixels, target, scaled, top, left, window)

    full = torch.nn.functional.interpolate(pixels[None], size=scaled, mode="bilinear",
                                           align_corners=False)[0]
    full_label = torch.nn.functional.interpolate(target[None, None].float(), size=scaled,
                                                 mode="nearest-exact")[0, 0].long()
    full = (full - MEAN) / STD
    pad_h, pad_w = max(top + window[0] - scaled[0], 0), max(left + window[1] - scaled[1], 0)
    full = torch.nn.functional.pad(full, (0, pad_w, 0, pad_h), value=0.0)
    full_label = torch.nn.functional.pad(full_label, (0, pad_w, 0, pad_h), value=255)
    expected = full[:, top:top + window[0], left:left + window[1]]
    expected_label = full_label[top:top + window[0], left:left + window[1]]
    assert x.shape == expected.shape and y.shape == expected_label.shape
    assert torch.allclose(x, expected, atol=1e-4)
    assert torch.equal(y, expected_label)


def test_train_transform_is_reproducible_with_a_generator():
    image, label = blocky_scene()
    a = TrainTransform(crop=(32, 32), generator=torch.Generator().manual_seed(7))
    b = TrainTransform(crop=(32, 32))
    c = TrainTransform(crop=(32, 32), generator=torch.Generator().manual_seed(8))
    outputs_a = [a(image, label) for _ in range(3)]
    generator = torch.Generator().manual_seed(7)
    outputs_b = [b(image, label, generator=generator) for _ in range(3)]
    outputs_c = [c(image, label) for _ in range(3)]
    for (xa, ya), (xb, yb) in zip(outputs_a, outputs_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(ya, yc) for (_, ya), (_, yc) in zip(outputs_a, outputs_c))


def test_train_transform_pads_with_ignore_and_zero():
    image, label = blocky_scene(16, 24)
    transform = TrainTransform(crop=(40, 30), scale_range=None, flip=False)
    x, y = transform(image, label)
    assert x.shape == (3, 40, 30)
    assert (y[16:] == 255).all() and (y[:, 24:] == 255).all()
    assert (x[:, 16:] == 0).all() and (x[:, :, 24:] == 0).all()
    assert torch.equal(y[:16, :24], torch.from_numpy(label.astype(np.int64)))


def test_train_transform_flips_both():
    image, label = blocky_scene(16, 24)
    transform = TrainTransform(crop=None, scale_range=None, flip=True)
    generator = torch.Generator().manual_seed(0)
    flips = 0
    plain_x, plain_y = EvalTransform()(image, label)
    for _ in range(20):
        x, y = transform(image, label, generator=generator)
        if torch.equal(y, plain_y):
            assert torch.equal(x, plain_x)
        else:
            assert torch.equal(y, plain_y.flip(-1)) and torch.equal(x, plain_x.flip(-1))
            flips += 1
    assert 0 < flips < 20


def test_train_transform_scales_size():
    image, label = blocky_scene(32, 48)
    x, y = TrainTransform(crop=None, scale_range=(2.0, 2.0), flip=False)(image, label)
    assert x.shape == (3, 64, 96) and y.shape == (64, 96)
    assert torch.equal(y[::2, ::2], torch.from_numpy(label.astype(np.int64)))


def test_transform_options_are_checked():
    with pytest.raises(D3NetError, match="crop"):
        TrainTransform(crop=(0, 10))
    with pytest.raises(D3NetError, match="scale range"):
        TrainTransform(scale_range=(2.0, 0.5))


def test_eval_transform_without_label():
    x, y = EvalTransform()(np.zeros((5, 6, 3), dtype=np.uint8), None)
    assert x.shape == (3, 5, 6) and y.shape == (5, 6) and (y == 255).all()
    with pytest.raises(D3NetError, match="label size"):
        EvalTransform()(np.zeros((5, 6, 3), dtype=np.uint8), np.zeros((6, 5), dtype=np.uint8))


# --------------------------------------------------------------------- datasets

def test_cityscapes_train_ids(tmp_path):
    labels = make_cityscapes(tmp_path)
    dataset = CityscapesDataset(tmp_path, "train")
    assert len(dataset) == 4 and dataset.has_labels
    cities = [s.image.parent.name for s in dataset.samples]
    assert cities == ["aachen", "aachen", "bochum", "bochum"]
    for i, sample in enumerate(dataset.samples):
        x, y = dataset[i]
        assert x.shape == (3, 12, 20) and y.dtype == torch.int64
        assert np.array_equal(y.numpy(), labels[sample.image.name])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 12, 20) and targets.shape == (2, 12, 20)


def test_cityscapes_label_ids_are_converted_with_one_warning(tmp_path):
    labels = make_cityscapes(tmp_path, label_kind="labelIds")
    with pytest.warns(UserWarning, match="4 of 4 labels.*labelIds") as record:
        dataset = CityscapesDataset(tmp_path, "train")
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    for i, sample in enumerate(dataset.samples):
        assert sample.label_ids
        _, y = dataset[i]
        assert np.array_equal(y.numpy(), labels[sample.image.name])


def test_cityscapes_prefers_train_ids_without_warning(tmp_path):
    make_cityscapes(tmp_path, label_kind="trainIds")
    for label in (tmp_path / "gtFine").rglob("*_labelTrainIds.png"):
        save(np.zeros((12, 20), np.uint8), label.with_name(label.name.replace("TrainIds", "Ids")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = CityscapesDataset(tmp_path)
    assert not any(s.label_ids for s in dataset.samples)


def test_cityscapes_test_split_without_labels(tmp_path):
    make_cityscapes(tmp_path, split="test", label_kind="none")
    dataset = CityscapesDataset(tmp_path, "test")
    assert not dataset.has_labels
    image, label = dataset.load(0)
    assert label is None and image.size == (20, 12)
    _, y = dataset[0]
    assert (y == 255).all()


def test_cityscapes_errors(tmp_path):
    with pytest.raises(D3NetError, match="does not exist"):
        CityscapesDataset(tmp_path / "nowhere")
    with pytest.raises(D3NetError, match="leftImg8bit is missing"):
        CityscapesDataset(tmp_path)
    make_cityscapes(tmp_path, split="train")
    with pytest.raises(D3NetError, match="no split 'val'.*found: train"):
        CityscapesDataset(tmp_path, "val")
    (tmp_path / "leftImg8bit" / "val" / "empty").mkdir(parents=True)
    with pytest.raises(D3NetError, match="no images found"):
        CityscapesDataset(tmp_path, "val")
    missing = next((tmp_path / "gtFine" / "train" / "bochum").glob("*000001*"))
    missing.unlink()
    with pytest.raises(D3NetError, match="bochum_000001_000019_leftImg8bit.png has no label"):
        CityscapesDataset(tmp_path, "train")


@pytest.mark.parametrize("bad_label, message", [
    (np.zeros((11, 20), np.uint8), "is 20x11 but image"),
    (np.full((12, 20), 40, np.uint8), "holds id 40"),
    (np.zeros((12, 20, 3), np.uint8), "mode RGB"),
])
def test_bad_label_files_are_named(tmp_path, bad_label, message):
    make_cityscapes(tmp_path, cities=("aachen",), per_city=1)
    label = next((tmp_path / "gtFine").rglob("*.png"))
    save(bad_label, label)
    dataset = CityscapesDataset(tmp_path)
    with pytest.raises(D3NetError, match=message) as error:
        dataset[0]
    assert label.name in str(error.value)


def test_unreadable_image_is_named(tmp_path):
    make_cityscapes(tmp_path, cities=("aachen",), per_city=1)
    image = next((tmp_path / "leftImg8bit").rglob("*.png"))
    image.write_bytes(b"not a png")
    with pytest.raises(D3NetError, match="cannot read image .*aachen_000000"):
        CityscapesDataset(tmp_path)[0]


def test_image_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for rel in ("a.jpg", "sub/b.png"):
        save(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8), tmp_path / "images" / rel)
        label = rng.integers(0, 19, (10, 14), dtype=np.uint8)
        save(label, tmp_path / "labels" / Path(rel).parent / f"{Path(rel).stem}_mask.png")
        expected[Path(rel).name] = label
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path / "images", tmp_path / "labels", label_suffix="_mask.png")
    assert [s.image.name for s in dataset.samples] == ["a.jpg", "b.png"]
    for i, sample in enumerate(dataset.samples):
        x, y = dataset[i]
        assert x.shape == (3, 10, 14)
        assert np.array_equal(y.numpy(), expected[sample.image.name])

    unlabelled = ImageFolderDataset(tmp_path / "images")
    assert not unlabelled.has_labels and (unlabelled[0][1] == 255).all()

    with pytest.raises(D3NetError, match="a.jpg has no label: expected .*labels/a.png"):
        ImageFolderDataset(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(D3NetError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", tmp_path / "labels")
    with pytest.raises(D3NetError, match="no images found"):
        ImageFolderDataset(tmp_path / "labels" / "sub", image_suffix=".jpg")


def test_image_folder_dataset_labels_inside_the_image_tree(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        image = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        save(image, tmp_path / "nested" / f"{name}.png")
        save(np.full((6, 8), 3, np.uint8), tmp_path / "nested" / "masks" / f"{name}.png")
        save(image, tmp_path / "flat" / f"{name}.png")
        save(np.full((6, 8), 4, np.uint8), tmp_path / "flat" / f"{name}_mask.png")
    nested = ImageFolderDataset(tmp_path / "nested", tmp_path / "nested" / "masks")
    assert [s.image.name for s in nested.samples] == ["x.png", "y.png"]
    assert (nested[1][1] == 3).all()
    flat = ImageFolderDataset(tmp_path / "flat", tmp_path / "flat", label_suffix="_mask.png")
    assert [s.image.name for s in flat.samples] == ["x.png", "y.png"]
    assert (flat[0][1] == 4).all()


def test_image_folder_dataset_with_cityscapes_names(tmp_path):
    labels = make_cityscapes(tmp_path, cities=("aachen",), label_kind="labelIds")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = ImageFolderDataset(
            tmp_path / "leftImg8bit" / "train", tmp_path / "gtFine" / "train",
            image_suffix="_leftImg8bit.png", label_suffix="_gtFine_labelIds.png", label_ids=True)
    assert len(dataset) == 2
    for i, sample in enumerate(dataset.samples):
        assert np.array_equal(dataset[i][1].numpy(), labels[sample.image.name])


def test_dataset_with_train_transform(tmp_path):
    make_cityscapes(tmp_path, size=(24, 40))
    dataset = CityscapesDataset(tmp_path, transform=TrainTransform(crop=(16, 16)))
    x, y = dataset[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)


# ---------------------------------------------------------------------- palette

def test_palette_matches_official_config(official):
    config = official / "seg" / "configs" / "D3Net_S.yaml"
    official = yaml.safe_load(config.read_text())["palette"]
    assert CITYSCAPES_PALETTE.tolist() == official
    assert len(CITYSCAPES_CLASSES) == 19 == yaml.safe_load(config.read_text())["num_classes"]
    assert CITYSCAPES_CLASSES[0] == "road" and CITYSCAPES_CLASSES[13] == "car"


def test_colorize_and_overlay():
    label = np.array([[0, 13], [255, 18]], dtype=np.uint8)
    colours = colorize(torch.from_numpy(label))
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    assert colours[0, 0].tolist() == [128, 64, 128] and colours[1, 1].tolist() == [119, 11, 32]
    assert colours[1, 0].tolist() == [0, 0, 0]

    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    blended = overlay(image, label, alpha=0.5)
    assert blended[0, 1].tolist() == [50, 50, 121]  # (100 + (0, 0, 142)) / 2
    assert blended[1, 0].tolist() == [100, 100, 100]  # ignore keeps the image
    assert np.array_equal(overlay(image, label, alpha=0.0), image)
    with pytest.raises(D3NetError, match="differ"):
        overlay(image, label[:1])

