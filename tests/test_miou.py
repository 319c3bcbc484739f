"""Confusion matrix and IoU scores against hand-computed and brute-force references."""
import math

import numpy as np
import pytest
import torch

from d3net.errors import D3NetError
from d3net.evaluate.miou import ConfusionMatrix

# Ground truth and prediction for 4 classes, one pixel ignored (255) where class 2 is
# predicted, class 3 predicted once but absent from the ground truth.
TARGET = torch.tensor([[0, 0, 1, 1],
                       [2, 255, 0, 1]])
PREDICTION = torch.tensor([[0, 1, 1, 1],
                           [3, 2, 0, 0]])
# (ground truth row, prediction column), counted by hand from the pixel pairs
# (0,0) (0,1) (1,1) (1,1) (2,3) [ignored] (0,0) (1,0).
EXPECTED_MATRIX = torch.tensor([[2, 1, 0, 0],
                                [1, 2, 0, 0],
                                [0, 0, 0, 1],
                                [0, 0, 0, 0]])


def test_hand_computed_matrix_and_scores():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(PREDICTION, TARGET)
    assert torch.equal(cm.matrix, EXPECTED_MATRIX)
    # class 0: TP 2, GT 3, predicted 3 -> 2 / 4; class 1 alike; class 2: TP 0 (its only
    # prediction fell on an ignored pixel); class 3: predicted once, absent -> 0.
    assert cm.iou().tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert cm.miou() == pytest.approx(0.25)
    assert cm.pixel_accuracy() == pytest.approx(4 / 7)
    accuracy = cm.class_accuracy()
    assert accuracy[:3].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert math.isnan(accuracy[3])


def test_class_absent_everywhere_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(num_classes=6)
    cm.update(PREDICTION, TARGET)
    iou = cm.iou()
    assert torch.isnan(iou[4:]).all()
    assert not torch.isnan(iou[:4]).any()
    assert cm.miou() == pytest.approx(0.25)  # mean over the 4 classes present


def test_batches_equal_sum_of_images():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 7, 9), generator=generator)
    target[0, :2] = 255
    prediction = torch.randint(0, 5, (3, 7, 9), generator=generator)
    whole = ConfusionMatrix(5)
    whole.update(prediction, target)
    parts = [ConfusionMatrix(5) for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(prediction[i], target[i])
    assert torch.equal(sum(part.matrix for part in parts), whole.matrix)
    assert int(whole.matrix.sum()) == 3 * 7 * 9 - 2 * 9


def test_against_brute_force_reference():
    rng = np.random.default_rng(1)
    classes = 19
    target = rng.integers(0, classes, (2, 40, 50))
    target[rng.random(target.shape) < 0.1] = 255
    target[target == 7] = 3  # class 7 absent from the ground truth
    noise = rng.integers(0, classes, target.shape)
    prediction = np.where(rng.random(target.shape) < 0.6, target, noise)
    prediction[prediction == 255] = 0
    prediction[prediction == 11] = 12  # class 11 never predicted
    prediction[(prediction == 16) & (target != 16)] = 0
    target[target == 16] = 0
    prediction[prediction == 16] = 0  # class 16 absent from both

    cm = ConfusionMatrix(classes)
    cm.update(torch.from_numpy(prediction), torch.from_numpy(target))
    expected_iou = []
    for c in range(classes):
        valid = target != 255
        tp = np.sum((target == c) & (prediction == c) & valid)
        union = np.sum(((target == c) | (prediction == c)) & valid)
        expected_iou.append(tp / union if union else np.nan)
    expected_iou = np.array(expected_iou)
    np.testing.assert_allclose(cm.iou().numpy(), expected_iou, equal_nan=True)
    assert np.isnan(expected_iou[16]) and expected_iou[7] == 0 and expected_iou[11] == 0
    assert cm.miou() == pytest.approx(np.nanmean(expected_iou))
    valid = target != 255
    assert cm.pixel_accuracy() == pytest.approx(np.mean(prediction[valid] == target[valid]))


def test_empty():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy())
    cm.update(torch.full((4, 4), 255), torch.full((4, 4), 255))  # everything ignored
    assert int(cm.matrix.sum()) == 0
    cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    assert cm.miou() == 1.0


def test_format_table():
    cm = ConfusionMatrix(19)
    cm.update(torch.tensor([[0, 0], [13, 1]]), torch.tensor([[0, 0], [13, 13]]))
    table = cm.format_table()
    lines = table.splitlines()
    road = next(line for line in lines if line.startswith("road"))
    car = next(line for line in lines if line.startswith("car "))
    sky = next(line for line in lines if line.startswith("sky"))
    assert "100.00" in road
    assert "50.00" in car        # car: TP 1, GT 2, predicted 1
    assert sky.split()[1] == "-"  # absent everywhere
    miou_line = next(line for line in lines if line.startswith("mIoU"))
    assert f"{100 * cm.miou():.2f}" in miou_line and "3 of 19" in miou_line
    assert "bicycle" in table and "pixel accuracy" in table
    custom = ConfusionMatrix(2)
    custom.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert "cat" in custom.format_table(["cat", "dog"])
    with pytest.raises(D3NetError, match="2 classes"):
        custom.format_table(["only one"])


@pytest.mark.parametrize("prediction, target, message", [
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "does not match"),
    (torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 30), "class id 30"),
    (torch.full((2, 2), 19), torch.zeros(2, 2, dtype=torch.long), "prediction holds class id 19"),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long), "integer"),
])
def test_bad_input(prediction, target, message):
    with pytest.raises(D3NetError, match=message):
        ConfusionMatrix(19).update(prediction, target)


def test_all_reduce_without_distributed_is_a_no_op():
    cm = ConfusionMatrix(4)
    cm.update(PREDICTION, TARGET)
    assert torch.equal(cm.all_reduce().matrix, EXPECTED_MATRIX)


def _reduce_worker(rank: int, world: int, init_file: str, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(4)
        cm.update(PREDICTION[rank], TARGET[rank])  # each rank sees one image row
        cm.all_reduce()
        queue.put((rank, cm.matrix.tolist()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork starts in a fraction of the time spawn needs (no fresh torch import)
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = context.Queue()
    init_file = str(tmp_path / "init")
    processes = [context.Process(target=_reduce_worker, args=(rank, 2, init_file, queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    try:
        results = dict(queue.get(timeout=60) for _ in processes)
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
    assert results[0] == results[1] == EXPECTED_MATRIX.tolist()
