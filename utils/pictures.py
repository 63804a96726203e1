"""Pictures of what a model sees: numbers say how good a model is, pictures say how it fails (thin
poles lost, sidewalk taken for road, a whole frame below the confidence threshold).

Each picture is one PNG of titled panels side by side, above the names of the classes in their colours.
`classes` lists (name, RGB colour) of every class, then Void's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from utils.dist import Runtime
from utils.engine import predict_probs
from utils.io import write_png

WRONG = (255, 0, 0)
VOID = (128, 128, 128)
HEADER, GAP, LEGEND_ROW = 14, 2, 14  # pixels: panel titles, between panels, per row of class names
Classes = Sequence[tuple[str, tuple[int, int, int]]]


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


def sheet(panels: list[np.ndarray], titles: list[str], classes: Classes) -> np.ndarray:
    """The panels side by side on white, each under its title, above the names of the classes in their colours."""
    height, width = panels[0].shape[:2]
    total = len(panels) * (width + GAP) - GAP
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend, x, y = [], 0, 0  # (name, colour, x, y below the panels) per class, in rows as wide as the panels
    for name, colour in classes:
        length = 12 + int(draw_probe.textlength(name)) + 8
        if x + length > total and x:
            x, y = 0, y + LEGEND_ROW
        legend.append((name, colour, x, y + HEADER + height + 2))
        x += length
    picture = Image.new("RGB", (total, HEADER + height + y + LEGEND_ROW + 2), "white")
    draw = ImageDraw.Draw(picture)
    for k, (panel, title) in enumerate(zip(panels, titles)):
        picture.paste(Image.fromarray(panel), (k * (width + GAP), HEADER))
        draw.text((k * (width + GAP) + 2, 1), title, fill="black")
    for name, colour, x, y in legend:
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=tuple(colour), outline="black")
        draw.text((x + 12, y + 1), name, fill="black")
    return np.asarray(picture)


def prediction_pictures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, names: Sequence[str],
                        folder: Path, rt: Runtime, classes: Classes) -> list[Path]:
    """Writes `folder/<name>.png` per image: image | ground truth | prediction | errors (red: wrong, grey: Void).
    The model is left in the mode (train or eval) it came in."""
    training = model.training
    predictions = torch.cat([predict_probs(model, batch, rt).argmax(1).cpu() for batch in images.split(8)]).numpy()
    model.train(training)
    truths = labels.detach().cpu().numpy().astype(np.int64)
    palette = [colour for _, colour in classes]
    paths = []
    for rgb, truth, prediction, name in zip(_rgb(images), truths, predictions, names):
        panels = [rgb, colourise(truth, palette), colourise(prediction, palette),
                  error_map(prediction, truth, len(palette) - 1)]
        paths.append(Path(folder) / f"{name}.png")
        write_png(paths[-1], sheet(panels, ["image", "ground truth", "prediction", "errors (red)"], classes))
    return paths


def pseudo_label_pictures(images: torch.Tensor, pseudo_labels: torch.Tensor, confidence: torch.Tensor | None,
                          names: Sequence[str], folder: Path, classes: Classes) -> list[Path]:
    """Writes `folder/<name>.png` per image: image | pseudo-label | teacher confidence (white: sure; black
    without confidence)."""
    if confidence is None:
        confidence = torch.zeros(pseudo_labels.shape)
    labels = pseudo_labels.detach().cpu().numpy().astype(np.int64)
    grays = np.clip(np.rint(confidence.detach().cpu().float().numpy() * 255), 0, 255).astype(np.uint8)
    paths = []
    palette = [colour for _, colour in classes]
    for rgb, label, gray, name in zip(_rgb(images), labels, grays, names):
        panels = [rgb, colourise(label, palette), np.repeat(gray[..., None], 3, axis=2)]
        paths.append(Path(folder) / f"{name}.png")
        write_png(paths[-1], sheet(panels, ["frame", "pseudo-label", "confidence (white: sure)"], classes))
    return paths
