"""Synthetic street scenes: layout, determinism, label content, speed, dataset round trip."""
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from d3net.data.cityscapes import CityscapesDataset
from d3net.data.synth_scenes import CITIES, generate_dataset, generate_scene, split_sizes
from d3net.errors import D3NetError
from d3net.image import label_ids_to_train_ids

VALID_IDS = set(range(19)) | {255}
SIZE = (64, 128)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    sizes = generate_dataset(root, images=6, size=SIZE, seed=3, splits=("train", "val", "test"),
                             progress=False)
    return root, sizes


def test_layout(synth_root):
    root, sizes = synth_root
    assert sizes == {"train": 4, "val": 1, "test": 1}
    for split, count in sizes.items():
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == count
        assert {p.parent.name for p in images} <= set(CITIES[split])
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            city, sequence, frame = stem.split("_")
            assert city == image.parent.name and len(sequence) == 6 and frame == "000019"
            labels = root / "gtFine" / split / city
            train_ids = labels / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = labels / f"{stem}_gtFine_labelIds.png"
            if split == "test":
                assert not train_ids.exists() and not label_ids.exists()
                continue
            rgb, train, official = (np.asarray(Image.open(p))
                                    for p in (image, train_ids, label_ids))
            assert rgb.shape == (*SIZE, 3) and rgb.dtype == np.uint8
            assert train.shape == official.shape == SIZE and train.dtype == np.uint8
            assert set(np.unique(train).tolist()) <= VALID_IDS
            assert np.array_equal(label_ids_to_train_ids(official), train)
    # Train cities are used round robin.
    assert len({p.parent.name for p in (root / "leftImg8bit" / "train").glob("*/*.png")}) == 3
    assert not list(root.rglob("*.part"))  # atomic writes leave no temporaries


def test_dataset_reads_both_label_kinds(synth_root, tmp_path):
    root, _ = synth_root
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train = CityscapesDataset(root, "train")
    assert len(train) == 4 and not any(s.label_ids for s in train.samples)
    x, y = train[0]
    assert x.shape == (3, *SIZE) and y.shape == SIZE

    # The same tree with only the official label ids: same train ids, one warning.
    generate_dataset(tmp_path, images=4, size=SIZE, seed=3, splits=("train", "val"), progress=False)
    direct = CityscapesDataset(tmp_path, "train")
    expected = [direct[i][1].numpy() for i in range(len(direct))]
    for path in tmp_path.rglob("*_labelTrainIds.png"):
        path.unlink()
    with pytest.warns(UserWarning, match="labelIds"):
        converted = CityscapesDataset(tmp_path, "train")
    assert len(converted) == 3 and all(s.label_ids for s in converted.samples)
    for i in range(len(converted)):
        assert np.array_equal(converted[i][1].numpy(), expected[i])

    test = CityscapesDataset(root, "test")
    assert not test.has_labels and (test[0][1] == 255).all()


def test_deterministic_per_seed(tmp_path):
    first = generate_dataset(tmp_path / "a", images=3, size=SIZE, seed=5, progress=False)
    generate_dataset(tmp_path / "b", images=3, size=SIZE, seed=5, progress=False)
    generate_dataset(tmp_path / "c", images=3, size=SIZE, seed=6, progress=False)
    assert first == {"train": 2, "val": 1}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 9
    differs = False
    for rel in files:
        a = np.asarray(Image.open(tmp_path / "a" / rel))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / rel)))
        differs |= not np.array_equal(a, np.asarray(Image.open(tmp_path / "c" / rel)))
    assert differs

    rgb1, label1 = generate_scene(np.random.default_rng(11), SIZE)
    rgb2, label2 = generate_scene(np.random.default_rng(11), SIZE)
    assert np.array_equal(rgb1, rgb2) and np.array_equal(label1, label2)


def test_scene_content_and_speed():
    present = set()
    for k in range(6):
        start = time.perf_counter()
        rgb, label = generate_scene(np.random.default_rng([0, k]), (256, 512))
        elapsed = time.perf_counter() - start
        assert elapsed < 0.5, f"scene took {elapsed:.2f} s"
        assert rgb.shape == (256, 512, 3) and rgb.dtype == np.uint8
        assert label.shape == (256, 512) and label.dtype == np.uint8
        classes = set(np.unique(label).tolist())
        assert classes <= VALID_IDS
        assert {0, 1, 2} <= classes  # road, sidewalk, building in every street
        assert len(classes - {255}) >= 7
        present |= classes
        # The image is not a flat paint-by-numbers of its label: noise and lighting.
        road = rgb[label == 0].astype(float)
        assert road.std(axis=0).mean() > 3
    assert len(present - {255}) >= 14


def test_classes_are_not_separable_by_colour_alone():
    """Road, sidewalk and building share grey values, so colour alone cannot tell them
    apart: their per-image mean brightness ranges overlap across scenes."""
    means = {0: [], 1: [], 2: []}
    for k in range(12):
        rgb, label = generate_scene(np.random.default_rng([1, k]), (128, 256))
        gray = rgb.astype(float).mean(axis=2)
        for c in means:
            means[c].append(gray[label == c].mean())
    ranges = {c: (min(v), max(v)) for c, v in means.items()}
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert ranges[a][0] < ranges[b][1] and ranges[b][0] < ranges[a][1], ranges


def test_split_rule_and_errors(tmp_path):
    assert split_sizes(20, ("train", "val")) == {"train": 16, "val": 4}
    assert split_sizes(20, ("train", "val", "test")) == {"train": 12, "val": 4, "test": 4}
    assert split_sizes(2, ("train", "val")) == {"train": 1, "val": 1}
    assert split_sizes(7, ("train",)) == {"train": 7}
    with pytest.raises(D3NetError, match="cannot fill"):
        split_sizes(1, ("train", "val"))
    with pytest.raises(D3NetError, match="distinct"):
        split_sizes(4, ("train", "train"))
    with pytest.raises(D3NetError, match="at least 32"):
        generate_scene(np.random.default_rng(0), (16, 64))
    with pytest.raises(D3NetError, match="at least 32"):
        generate_dataset(tmp_path, images=2, size=(8, 8), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(D3NetError, match="not a folder"):
        generate_dataset(tmp_path / "file", images=2, progress=False)
