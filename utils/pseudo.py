"""Segmentation pseudo-labels as class-index PNGs, one per unlabeled frame.

The teacher predicts in batches (optionally averaged over flips and scales), the prediction is
resized to the frame's size on disk, pixels below the confidence threshold become Void, and
PNGs are encoded by a thread pool while the next batch is predicted. Files are written
atomically, so after a kill the folder holds only whole files: a re-run writes just the missing
ones. A manifest names the teacher and options that made the folder; a folder made by another
teacher is cleared instead of being mixed with new labels.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from data.camvid import SegmentationSet
from utils.dist import Runtime
from utils.engine import predict_probs
from utils.errors import UserError
from utils.io import write_json, write_png
from utils.metrics import ConfusionMatrix

MANIFEST = "pseudo.json"


def pseudo_folder(root: str | Path, iteration: int) -> Path:
    folder = Path(root) / f"train_pseudoIt{iteration}"
    if folder.name.endswith("_labels") or folder.parent.name.endswith("_labels"):
        raise UserError(f"Refusing to write pseudo-labels into {folder}: *_labels folders hold ground truth.")
    return folder


def _is_complete(path: Path, size: tuple[int, int]) -> bool:
    try:
        with Image.open(path) as image:
            return image.size == size and image.mode == "L"
    except OSError:
        return False


def _prepare(folder: Path, identity: dict[str, Any], rt: Runtime) -> None:
    """Clears the folder if another teacher or other options made it, then records ours.

    Temporary files that a killed run left behind (`.NAME.png.*.tmp`) are removed in any case.
    """
    manifest = folder / MANIFEST
    if rt.is_main:
        try:
            same = manifest.is_file() and json.loads(manifest.read_text()) == identity
        except (OSError, json.JSONDecodeError):
            same = False
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        if not same:
            for stale in folder.glob("*.png"):
                stale.unlink()
            write_json(manifest, identity)
    rt.barrier()


def label_frames(model: nn.Module, frames: SegmentationSet, folder: Path, identity: dict[str, Any], rt: Runtime,
                 ignore_index: int, batch_size: int, threshold: float = 0.0, scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> None:
    """Writes `folder/<frame>.png` for every frame not already there; each process takes its share."""
    try:
        _write_labels(model, frames, folder, identity, rt, ignore_index, batch_size, threshold, scales, flip)
    except OSError as error:
        raise UserError(f"Cannot write pseudo-labels into {folder} ({error.strerror or error}). Choose a writable "
                        "place with --pseudo_root=PATH (or free some disk space) and re-run to resume.") from error
    rt.barrier()


def _write_labels(model: nn.Module, frames: SegmentationSet, folder: Path, identity: dict[str, Any], rt: Runtime,
                  ignore_index: int, batch_size: int, threshold: float, scales: Sequence[float], flip: bool) -> None:
    _prepare(folder, identity, rt)
    width, height = frames.source_size
    todo = [i for i, name in enumerate(frames.names) if not _is_complete(folder / f"{name}.png", (width, height))]
    mine = todo[rt.rank :: rt.world]
    with ThreadPoolExecutor(max_workers=4) as writer:
        pending = []
        for start in tqdm(range(0, len(mine), batch_size), desc=f"pseudo-labels → {folder.name}", leave=False,
                          disable=not rt.is_main, dynamic_ncols=True):
            index = mine[start : start + batch_size]
            probs = predict_probs(model, frames.images[index], rt, scales, flip)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, (height, width), mode="bilinear", align_corners=False)
            confidence, labels = probs.max(1)
            labels[confidence < threshold] = ignore_index
            labels = labels.to(torch.uint8).cpu().numpy()
            pending += [writer.submit(write_png, folder / f"{frames.names[i]}.png", labels[k])
                        for k, i in enumerate(index)]
        for job in pending:
            job.result()


def pseudo_quality(pseudo: torch.Tensor, truth: torch.Tensor | None, num_classes: int,
                   ignore_index: int) -> dict[str, Any]:
    """How good the pseudo-labels are where ground truth exists (the split protocol), and how much is ignored."""
    ignored = float((pseudo == ignore_index).float().mean() * 100)
    if truth is None:
        return {"pseudo_pixel_acc": None, "pseudo_miou": None, "pseudo_ignored_frac": ignored}
    cm = ConfusionMatrix(num_classes)
    kept = pseudo != ignore_index
    cm.update(truth[kept], pseudo[kept])
    return {"pseudo_pixel_acc": cm.pixel_accuracy(), "pseudo_miou": cm.miou(), "pseudo_ignored_frac": ignored}
