"""ConfusionMatrix against matrices and scores worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from data.camvid import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from utils.metrics import ConfusionMatrix

# Truth and prediction of 8 pixels of 3 classes, as a 2x4 image. By hand, rows = truth:
#   truth 0: predicted 0, 1, 0  -> [2, 1, 0]
#   truth 1: predicted 1, 1     -> [0, 2, 0]
#   truth 2: predicted 2, 0, 2  -> [1, 0, 2]
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
MATRIX = [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
# IoU = TP / (row + column - TP): 2/(3+3-2), 2/(2+3-2), 2/(3+2-2).
IOU = [50.0, 200 / 3, 200 / 3]
RECALL = [200 / 3, 100.0, 200 / 3]  # TP / row
PRECISION = [200 / 3, 200 / 3, 100.0]  # TP / column
PIXEL_ACC = 75.0  # 6 of 8 on the diagonal
MIOU = (50 + 200 / 3 + 200 / 3) / 3


def filled(num_classes: int, target: torch.Tensor, pred: torch.Tensor) -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes)
    cm.update(target, pred)
    return cm


def test_matrix_and_scores_of_a_hand_computed_example() -> None:
    cm = filled(3, TARGET, PRED)
    assert cm.mat.tolist() == MATRIX
    assert cm.iou().tolist() == pytest.approx(IOU)
    assert cm.recall().tolist() == pytest.approx(RECALL)
    assert cm.precision().tolist() == pytest.approx(PRECISION)
    assert cm.pixel_accuracy() == pytest.approx(PIXEL_ACC)
    assert cm.miou() == pytest.approx(MIOU)


def test_updates_accumulate() -> None:
    cm = filled(3, TARGET, PRED)
    cm.update(TARGET, PRED)
    assert cm.mat.tolist() == [[2 * v for v in row] for row in MATRIX]
    assert cm.miou() == pytest.approx(MIOU)


def test_ignored_pixels_do_not_count() -> None:
    target = torch.tensor([[0, 1, IGNORE_INDEX, IGNORE_INDEX], [1, IGNORE_INDEX, 0, 0]])
    pred = torch.tensor([[0, 1, 5, 0], [0, 1, 0, 1]])
    cm = filled(NUM_CLASSES, target, pred)
    assert cm.mat.sum() == 5
    assert cm.mat[0, 0] == 2 and cm.mat[0, 1] == 1 and cm.mat[1, 1] == 1 and cm.mat[1, 0] == 1
    assert cm.mat[:, 5].sum() == 0  # the prediction under an ignored pixel is not a false positive
    assert cm.pixel_accuracy() == pytest.approx(60.0)


def test_a_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_the_mean() -> None:
    cm = filled(4, TARGET, PRED)
    iou = cm.iou()
    assert math.isnan(iou[3])
    assert iou[:3].tolist() == pytest.approx(IOU)
    assert cm.miou() == pytest.approx(MIOU)


def test_a_class_in_the_truth_but_never_predicted_scores_zero_not_nan() -> None:
    cm = filled(3, torch.tensor([0, 0, 2, 2]), torch.tensor([0, 0, 0, 0]))
    assert cm.iou()[2] == 0
    assert math.isnan(cm.iou()[1])
    # Class 0: TP 2, row 2, column 4 -> 50; class 2: 0; class 1 absent.
    assert cm.miou() == pytest.approx(25.0)


def test_classification_targets_give_accuracy() -> None:
    target = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    pred = torch.tensor([3, 1, 4, 0, 5, 9, 2, 6, 0, 0])
    cm = filled(10, target, pred)
    assert cm.accuracy() == pytest.approx(70.0)
    assert cm.mat.sum() == 10


def test_an_empty_matrix_has_nan_accuracy() -> None:
    assert math.isnan(ConfusionMatrix(3).pixel_accuracy())
    assert math.isnan(ConfusionMatrix(3).miou())


def test_summary_gives_none_for_absent_classes() -> None:
    names = ["road", "car", "sky", "boat"]
    summary = filled(4, TARGET, PRED).summary(names)
    assert list(summary["per_class_iou"]) == names
    assert summary["per_class_iou"]["boat"] is None
    assert summary["per_class_iou"]["road"] == pytest.approx(50.0)
    assert summary["miou"] == pytest.approx(MIOU)
    assert summary["mean_recall"] == pytest.approx(sum(RECALL) / 3)
    assert summary["mean_precision"] == pytest.approx(sum(PRECISION) / 3)
    assert summary["pixel_acc"] == pytest.approx(PIXEL_ACC)


def test_table_lists_every_class_in_aligned_rows() -> None:
    target = torch.arange(NUM_CLASSES - 1).repeat(3)  # the last class never appears
    cm = filled(NUM_CLASSES, target, target.roll(1))
    table = cm.table(CLASS_NAMES)
    lines = table.splitlines()
    assert len(lines) == 1 + NUM_CLASSES + 2
    for name, line in zip(CLASS_NAMES, lines[1:]):
        assert line.startswith(name)
    # Header, class rows and the mean row share one width, so every column lines up.
    assert len({len(line) for line in lines[:-1]}) == 1
    assert lines[-2].startswith("mean") and lines[-1].startswith("pixel accuracy")
    assert lines[NUM_CLASSES].split()[1:] == ["-", "-", "-"]  # absent class: no numbers, still aligned


@pytest.mark.parametrize("bad", [3, -1, 40000])
def test_a_prediction_outside_the_classes_is_refused_not_counted_in_another_cell(bad: int) -> None:
    cm = ConfusionMatrix(3)
    pred = PRED.clone()
    pred[0, 0] = bad
    with pytest.raises(ValueError, match=r"class indices 0\.\.2"):
        cm.update(TARGET, pred)
    assert cm.mat.sum() == 0  # nothing of the refused batch was counted
