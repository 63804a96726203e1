"""Every score in the project, segmentation's and classification's, is read off one confusion matrix,
filled with one `bincount` on the device the predictions live on: no metric is computed two ways.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch


class ConfusionMatrix:
    """Counts of (true class, predicted class); rows are the truth. Targets >= num_classes are ignored."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Adds a batch. Ignored targets go to an extra bin that is dropped: boolean indexing would
        copy the kept pixels and is ten times slower on the CPU; small integers halve the traffic.
        A prediction outside 0..num_classes-1 is refused: it would land in another cell unseen."""
        n = self.num_classes
        if pred.numel() and bool(((pred < 0) | (pred >= n)).any()):
            raise ValueError(f"Predictions must be class indices 0..{n - 1}, but range over "
                             f"{int(pred.min())}..{int(pred.max())}: does the model predict {n} classes?")
        dtype = torch.int16 if (n + 1) ** 2 < 2**15 else torch.int32
        target = target.reshape(-1).to(self.mat.device, dtype)
        pred = pred.reshape(-1).to(self.mat.device, dtype)
        index = torch.where((target >= 0) & (target < n), target * n + pred, n * n)
        self.mat += torch.bincount(index.long(), minlength=n * n + 1)[: n * n].view(n, n)

    def reduce(self) -> None:
        """Sums the matrices of all processes, so every rank holds the whole dataset's counts."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.mat)

    @property
    def counts(self) -> torch.Tensor:
        return self.mat.double().cpu()

    def iou(self) -> torch.Tensor:
        """Per-class IoU in percent; NaN for a class absent from both truth and prediction."""
        m = self.counts
        tp = m.diag()
        return 100 * tp / (m.sum(0) + m.sum(1) - tp)

    def recall(self) -> torch.Tensor:
        m = self.counts
        return 100 * m.diag() / m.sum(1)

    def precision(self) -> torch.Tensor:
        m = self.counts
        return 100 * m.diag() / m.sum(0)

    def pixel_accuracy(self) -> float:
        m = self.counts
        return float(100 * m.diag().sum() / m.sum()) if m.sum() > 0 else float("nan")

    accuracy = pixel_accuracy  # classification reads the same number as accuracy

    def miou(self) -> float:
        """The mean over the classes present in the truth or the predictions; the others have no IoU."""
        return _nanmean(self.iou())

    def summary(self, class_names: Sequence[str]) -> dict:
        """Plain-Python numbers for records: means, and per-class IoU keyed by class name."""
        return {
            "miou": self.miou(),
            "mean_recall": _nanmean(self.recall()),
            "mean_precision": _nanmean(self.precision()),
            "pixel_acc": self.pixel_accuracy(),
            "per_class_iou": {name: None if math.isnan(v) else round(v, 4)
                              for name, v in zip(class_names, self.iou().tolist())},
        }

    def table(self, class_names: Sequence[str]) -> str:
        """An aligned table: one row per class, then the means."""
        width = max(len(name) for name in (*class_names, "pixel accuracy"))
        rows = [f"{'class':<{width}}  {'IoU':>6}  {'recall':>6}  {'prec.':>6}"]
        for name, *values in zip(class_names, self.iou().tolist(), self.recall().tolist(), self.precision().tolist()):
            rows.append(f"{name:<{width}}" + "".join(f"  {format_number(v):>6}" for v in values))
        means = (self.miou(), _nanmean(self.recall()), _nanmean(self.precision()))
        rows.append(f"{'mean':<{width}}" + "".join(f"  {format_number(v):>6}" for v in means))
        rows.append(f"{'pixel accuracy':<{width}}  {format_number(self.pixel_accuracy()):>6}")
        return "\n".join(rows)


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~values.isnan()]
    return float(valid.mean()) if valid.numel() else float("nan")


def format_number(value: Any, missing: str = "-") -> str:
    """Two decimals for a float, yes or no for a bool; `missing` for a missing number (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
