"""Images as people have them: EXIF orientation everywhere images are read, and label files
that Cityscapes' own tools read correctly."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from d3net import image as imaging
from d3net.configs import SegConfig
from d3net.data import cityscapes
from d3net.data.cityscapes import CityscapesDataset, ImageFolderDataset
from d3net.errors import D3NetError
from d3net.image import read_image, train_ids_to_label_ids, write_outputs
from d3net.segment import Segmenter

EXIF_ORIENTATION = 0x0112

# What each EXIF orientation means, from the EXIF specification, written with numpy
# (independently of Pillow's own table): stored pixels -> pixels as displayed.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                       # mirrored left-right
    3: lambda a: a[::-1, ::-1],                    # turned 180 degrees
    4: lambda a: a[::-1],                          # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),                 # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),                  # turned 90 degrees clockwise
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),    # mirrored along the other diagonal
    8: lambda a: np.rot90(a, 1),                   # turned 90 degrees counter-clockwise
}


def photo(height=24, width=40, seed=0) -> np.ndarray:
    """An RGB image with no symmetry (smooth, so JPEG keeps it recognisable)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 3.0 + y / 5.0)], -1)
    return np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


def save_with_orientation(array: np.ndarray, path, orientation: int):
    """Save stored pixels with an EXIF orientation tag, as a phone camera does."""
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes(), **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def stored_pixels(path) -> np.ndarray:
    """The file's pixels as stored (what d3net used to read)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_read_image_shows_the_image_as_viewers_do(tmp_path, orientation, suffix):
    """The issue's case is orientation 6 (a phone photo stored landscape, shown portrait);
    every other orientation and a PNG with EXIF are members of the same kind."""
    path = save_with_orientation(photo(), tmp_path / f"x{suffix}", orientation)
    stored = stored_pixels(path)
    image = read_image(path)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), DISPLAYED[orientation](stored))
    assert image.getexif().get(EXIF_ORIENTATION, 1) == 1  # applied once, not again later


def test_images_without_orientation_are_not_copied(tmp_path, monkeypatch):
    """The normal path is untouched: no transpose (and no copy) without an orientation."""
    Image.fromarray(photo()).save(tmp_path / "plain.png")
    save_with_orientation(photo(), tmp_path / "upright.jpg", 1)
    monkeypatch.setattr(ImageOps, "exif_transpose",
                        lambda *a, **k: pytest.fail("transposed an image that needs none"))
    for name in ("plain.png", "upright.jpg"):
        assert read_image(tmp_path / name).size == (40, 24)


class Pointwise(nn.Module):
    """A 1x1 'network' of the 19 Cityscapes classes: labels follow the pixels, so a turned
    image gives turned labels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 19, 1)
        self.config = SegConfig(name="pointwise", num_classes=19)

    def forward(self, x):
        return self.conv(x)


def test_segment_writes_labels_and_overlay_as_the_photo_is_displayed(tmp_path):
    """The issue's case: labels and overlay of an orientation-6 JPEG came out turned 90
    degrees against the photo as every viewer shows it."""
    path = save_with_orientation(photo(24, 40), tmp_path / "phone.jpg", 6)
    displayed = DISPLAYED[6](stored_pixels(path))
    assert displayed.shape == (40, 24, 3)
    segmenter = Segmenter(Pointwise())
    expected, _ = segmenter.predict_image(np.ascontiguousarray(displayed))
    [(_, files)] = list(segmenter.segment_files([path], tmp_path / "out", progress=False))
    train_ids = np.asarray(Image.open(files.train_ids))
    np.testing.assert_array_equal(train_ids, expected)
    assert Image.open(files.overlay).size == Image.open(files.label_ids).size == (24, 40)


def test_datasets_read_images_as_displayed(tmp_path):
    """Training data and evaluation: an orientation-6 photo annotated as displayed loads;
    a label drawn on the stored pixels is refused, naming the EXIF orientation."""
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    path = save_with_orientation(photo(24, 40), images / "phone.jpg", 6)
    label = (np.arange(40 * 24) % 19).astype(np.uint8).reshape(40, 24)  # as displayed
    Image.fromarray(label).save(labels / "phone.png")
    dataset = ImageFolderDataset(images, labels)
    image, loaded = dataset.load(0)
    np.testing.assert_array_equal(np.asarray(image), DISPLAYED[6](stored_pixels(path)))
    np.testing.assert_array_equal(loaded, label)
    x, y = dataset[0]
    assert tuple(x.shape) == (3, 40, 24) and tuple(y.shape) == (40, 24)

    Image.fromarray(np.ascontiguousarray(label.T)).save(labels / "phone.png")  # stored orientation
    with pytest.raises(D3NetError, match="24x40 as displayed .*EXIF orientation"):
        dataset.load(0)

    # the Cityscapes layout goes through the same reader
    root = tmp_path / "city"
    (root / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (root / "gtFine" / "val" / "x").mkdir(parents=True)
    save_with_orientation(photo(24, 40), root / "leftImg8bit" / "val" / "x" /
                          "x_000000_000000_leftImg8bit.png", 8)
    Image.fromarray(label).save(root / "gtFine" / "val" / "x" /
                                "x_000000_000000_gtFine_labelTrainIds.png")
    image, _ = CityscapesDataset(root, "val").load(0)
    assert image.size == (24, 40)


def test_one_image_reader_everywhere():
    from d3net import segment
    assert segment.read_image is cityscapes.read_image is imaging.read_image


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(D3NetError, match="is a folder, not an image"):
        read_image(tmp_path)
    with pytest.raises(D3NetError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(D3NetError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg")


# --------------------------------------------------------------------- label ids on disk

def test_label_ids_file_holds_cityscapes_label_ids(tmp_path):
    """The issue's case: `*_labelIds.png` held train ids (0-18), which Cityscapes' own
    evaluator reads as label ids and scores 0.0 mIoU."""
    image = photo(24, 40)
    Image.fromarray(image).save(tmp_path / "street.png")
    files = Segmenter(Pointwise()).segment_file(tmp_path / "street.png", tmp_path / "out")
    assert files.label_ids == tmp_path / "out" / "street_labelIds.png"
    assert files.train_ids == tmp_path / "out" / "street_trainIds.png"
    assert files.overlay == tmp_path / "out" / "street_overlay.png"
    train_ids = np.asarray(Image.open(files.train_ids))
    label_ids = np.asarray(Image.open(files.label_ids))
    assert Image.open(files.label_ids).mode == "L" and train_ids.max() <= 18
    np.testing.assert_array_equal(label_ids, train_ids_to_label_ids(train_ids))
    assert set(np.unique(label_ids)) <= set(imaging.LABEL_ID_TO_TRAIN_ID)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "street_labelIds.png", "street_overlay.png", "street_trainIds.png"]


def test_models_of_other_classes_write_no_label_ids(tmp_path):
    """Another member: Cityscapes label ids mean nothing for a model of other classes, so
    only train ids (the model's class index) are written."""
    class FiveClasses(Pointwise):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 1)
            self.config = SegConfig(name="five", num_classes=5)

    Image.fromarray(photo()).save(tmp_path / "a.png")
    files = Segmenter(FiveClasses()).segment_file(tmp_path / "a.png", tmp_path / "out")
    assert files.label_ids is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_overlay.png",
                                                                   "a_trainIds.png"]


def test_cityscapes_evaluator_scores_our_label_ids(tmp_path):
    """Cityscapes' own pixel-level evaluator, given `d3net segment`'s `*_labelIds.png` of a
    perfect prediction, scores 1.0 (it scored train ids in that file as about 0)."""
    evaluator = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="optional cityscapesscripts package (extra 'cityscapes') not installed")
    from d3net.data.synth_scenes import generate_dataset

    generate_dataset(tmp_path / "city", images=5, size=(64, 128), seed=3, progress=False,
                     splits=("train", "val"))
    dataset = CityscapesDataset(tmp_path / "city", "val")
    predictions, truths = [], []
    for index, sample in enumerate(dataset.samples):
        image, train_ids = dataset.load(index)
        perfect = np.where(train_ids == 255, 0, train_ids).astype(np.uint8)
        stem = sample.image.name.replace("_leftImg8bit.png", "")
        files = write_outputs(image, perfect, tmp_path / "pred", stem)
        predictions.append(str(files.label_ids))
        truths.append(str(sample.label).replace("_labelTrainIds", "_labelIds"))
    args = evaluator.args
    args.evalInstLevelScore = False  # needs *_instanceIds.png, which synthetic scenes lack
    args.JSONOutput, args.quiet = False, True
    result = evaluator.evaluateImgLists(predictions, truths, args)
    assert result["averageScoreClasses"] == pytest.approx(1.0)
