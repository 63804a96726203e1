"""Pictures of what a model sees: predictions next to the truth, pseudo-labels next to their confidence.

Numbers say how good a model is; pictures say how it fails (thin poles lost, sidewalk taken for
road, a whole frame below the confidence threshold). Each picture is one PNG of panels side by
side at the image's size, in the CamVid colours, cheap enough to write after every iteration.

Prediction: image | ground truth | prediction | errors (red: wrong, grey: Void, black: right).
Pseudo-label: image | pseudo-label | teacher confidence (white = sure; black without confidence).
A `palette` holds one RGB colour per class, then Void's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from utils.dist import Runtime
from utils.engine import predict_probs
from utils.io import write_png

WRONG = (255, 0, 0)
VOID = (128, 128, 128)


def _rgb(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) uint8 tensor → (N,H,W,3) uint8 array."""
    return images.detach().cpu().permute(0, 2, 3, 1).to(torch.uint8).numpy()


def colourise(index: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H,W,3) colours of an index mask; values that are no class (Void, 255 padding, -1) take Void's colour."""
    index = np.asarray(index)
    colours = np.asarray(palette, dtype=np.uint8)
    known = (index >= 0) & (index < len(colours))
    return colours[np.where(known, index, len(colours) - 1)]


def error_map(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(H,W,3): red where the prediction misses a labeled pixel, grey where the truth is Void, black elsewhere."""
    picture = np.zeros((*truth.shape, 3), dtype=np.uint8)
    void = (truth < 0) | (truth >= num_classes)
    picture[void] = VOID
    picture[~void & (prediction != truth)] = WRONG
    return picture


def confidence_map(confidence: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(H,W,3) grayscale of a confidence in [0, 1]; black when there is none."""
    if confidence is None:
        return np.zeros((*shape, 3), dtype=np.uint8)
    gray = np.clip(np.rint(np.asarray(confidence, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _check_sizes(images: torch.Tensor, masks: torch.Tensor, names: Sequence[str], what: str) -> None:
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:] or len(names) != len(images):
        raise ValueError(f"{what} {tuple(masks.shape)} and {len(names)} names do not fit images "
                         f"{tuple(images.shape)}: give one (H,W) mask and one name per image, at the images' size.")


def _predict(model: nn.Module, images: torch.Tensor, rt: Runtime, batch_size: int) -> np.ndarray:
    """Class indices (N,H,W), leaving the model in the mode (train or eval) it came in."""
    training = model.training
    predictions = [predict_probs(model, images[i : i + batch_size], rt).argmax(1).cpu()
                   for i in range(0, len(images), batch_size)]
    model.train(training)
    return torch.cat(predictions).numpy()


def prediction_pictures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
                        folder: Path, rt: Runtime, palette: Sequence[tuple[int, int, int]],
                        batch_size: int = 8) -> list[Path]:
    """Writes `folder/<name>.png` per image: image | ground truth | prediction | errors (4W x H)."""
    _check_sizes(images, labels, names, "labels")
    predictions = _predict(model, images, rt, batch_size)
    truths = labels.detach().cpu().numpy().astype(np.int64)
    paths = []
    for rgb, truth, prediction, name in zip(_rgb(images), truths, predictions, names):
        panels = [rgb, colourise(truth, palette), colourise(prediction, palette),
                  error_map(prediction, truth, len(palette) - 1)]
        paths.append(Path(folder) / f"{name}.png")
        write_png(paths[-1], np.concatenate(panels, axis=1))
    return paths


def pseudo_label_pictures(images: torch.Tensor, pseudo_labels: torch.Tensor, confidence: torch.Tensor | None,
                          names: Sequence[str], folder: Path, palette: Sequence[tuple[int, int, int]]) -> list[Path]:
    """Writes `folder/<name>.png` per image: image | pseudo-label (Void black) | confidence (3W x H)."""
    _check_sizes(images, pseudo_labels, names, "pseudo-labels")
    if confidence is not None:
        _check_sizes(images, confidence, names, "confidence")
    labels = pseudo_labels.detach().cpu().numpy().astype(np.int64)
    confidences = [None] * len(labels) if confidence is None else confidence.detach().cpu().float().numpy()
    paths = []
    for rgb, label, sure, name in zip(_rgb(images), labels, confidences, names):
        panels = [rgb, colourise(label, palette), confidence_map(sure, label.shape)]
        paths.append(Path(folder) / f"{name}.png")
        write_png(paths[-1], np.concatenate(panels, axis=1))
    return paths
