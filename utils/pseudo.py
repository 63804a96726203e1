"""Segmentation pseudo-labels as class-index PNGs, one per unlabeled frame.

The teacher predicts in batches (optionally averaged over flips and scales), the prediction is
resized to the frame's size on disk, pixels below the confidence threshold (lowered per class
with a class share, see utils/confidence.py) become Void, and PNGs are encoded by a thread pool
while the next batch is predicted. With an image share, only the frames the teacher is most
reliable on go to the student (ST++'s image-level selection). Files are written atomically, so
after a kill the folder holds only whole files: a re-run writes just the missing ones. A manifest
names the teacher and options that made the folder; a folder made by another teacher is cleared
instead of being mixed with new labels.
"""
from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from data.camvid import SegmentationSet
from data.classes import NUM_CLASSES
from utils.confidence import (BINS, class_cutoffs, confidence_histogram, cutoff_confidences, image_reliability,
                              keep_mask, most_reliable)
from utils.dist import Runtime
from utils.engine import predict_probs
from utils.errors import UserError
from utils.io import write_json, write_png
from utils.metrics import ConfusionMatrix

MANIFEST = "pseudo.json"
CLASS_THRESHOLDS = "class_thresholds.json"
RELIABILITY = "reliability.json"


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
            for survey in (CLASS_THRESHOLDS, RELIABILITY):
                (folder / survey).unlink(missing_ok=True)
            write_json(manifest, identity)
    rt.barrier()


def label_frames(model: nn.Module, frames: SegmentationSet, folder: Path, identity: dict[str, Any], rt: Runtime,
                 ignore_index: int, batch_size: int, threshold: float = 0.0, scales: Sequence[float] = (1.0,),
                 flip: bool = False, class_share: float = 0.0, image_share: float = 1.0) -> list[str]:
    """Writes `folder/<frame>.png` for every frame not already there; each process takes its share.

    Returns the names of the frames the student learns from: all of them, or with `image_share` < 1
    that share of the frames, those with the highest `image_reliability` (scores kept in
    `folder/reliability.json`). With `class_share`, each class's confidence cut-off
    (utils/confidence.py) is written to `folder/class_thresholds.json`. Both come from a first
    pass over all frames, which are then predicted again to write them: holding every frame's
    confidences at full resolution would need gigabytes for the thesis's thousands of frames,
    while a second pass only repeats the prediction.
    """
    # The folder belongs to these very frames, not only to this many: another split or frame folder with
    # the same count must not reuse its files or the reliability scores, which are keyed by name.
    identity = {**identity, "frame_names_crc32": zlib.crc32("\n".join(frames.names).encode())}
    try:
        _write_labels(model, frames, folder, identity, rt, ignore_index, batch_size, threshold, scales, flip,
                      class_share, image_share)
    except OSError as error:
        raise UserError(f"Cannot write pseudo-labels into {folder} ({error.strerror or error}). Choose a writable "
                        "place with --pseudo_root=PATH (or free some disk space) and re-run to resume.") from error
    rt.barrier()
    if image_share >= 1:
        return list(frames.names)
    kept = most_reliable(json.loads((folder / RELIABILITY).read_text())["reliability"], image_share)
    return [name for name in frames.names if name in kept]


Predictions = Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]


def _predictions(model: nn.Module, frames: SegmentationSet, indices: list[int], rt: Runtime, batch_size: int,
                 scales: Sequence[float], flip: bool, desc: str) -> Predictions:
    """(frame indices, confidence, argmax) per batch, at the frames' size on disk."""
    width, height = frames.source_size
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, leave=False, disable=not rt.is_main,
                      dynamic_ncols=True):
        index = indices[start : start + batch_size]
        probs = predict_probs(model, frames.images[index], rt, scales, flip)
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, (height, width), mode="bilinear", align_corners=False)
        confidence, labels = probs.max(1)
        yield index, confidence, labels


def _survey(model: nn.Module, frames: SegmentationSet, rt: Runtime, batch_size: int, scales: Sequence[float],
            flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Over all frames: the (class, confidence bin) histogram and each frame's reliability."""
    histogram = torch.zeros(NUM_CLASSES, BINS, dtype=torch.long, device=rt.device)
    reliability = torch.zeros(len(frames), device=rt.device)
    for index, confidence, labels in _predictions(model, frames, list(range(rt.rank, len(frames), rt.world)), rt,
                                                  batch_size, scales, flip, "confidence per class and frame"):
        histogram += confidence_histogram(confidence, labels, NUM_CLASSES)
        reliability[index] = image_reliability(confidence, labels, NUM_CLASSES).to(rt.device)
    if rt.distributed:
        torch.distributed.all_reduce(histogram)
        torch.distributed.all_reduce(reliability)
    return histogram, reliability


def _write_labels(model: nn.Module, frames: SegmentationSet, folder: Path, identity: dict[str, Any], rt: Runtime,
                  ignore_index: int, batch_size: int, threshold: float, scales: Sequence[float], flip: bool,
                  class_share: float, image_share: float) -> None:
    _prepare(folder, identity, rt)
    # Rank 0 lists what is missing for everyone: a rank listing later would see rank 0's new files.
    todo = rt.broadcast([i for i, name in enumerate(frames.names)
                         if not _is_complete(folder / f"{name}.png", frames.source_size)] if rt.is_main else None)
    need_cutoffs = bool(todo) and class_share > 0
    need_reliability = image_share < 1 and rt.broadcast(not (folder / RELIABILITY).is_file() if rt.is_main else None)
    cutoffs = None
    if need_cutoffs or need_reliability:
        histogram, reliability = _survey(model, frames, rt, batch_size, scales, flip)
        if need_cutoffs:
            cutoffs = class_cutoffs(histogram, class_share)
            if rt.is_main:
                write_json(folder / CLASS_THRESHOLDS, {"class_share": class_share, "threshold": threshold,
                                                      "confidence_needed": cutoff_confidences(cutoffs, threshold)})
        if rt.is_main:
            write_json(folder / RELIABILITY, {"reliability": dict(zip(frames.names, reliability.tolist()))})
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=4) as writer:
        pending = []
        for index, confidence, labels in _predictions(model, frames, todo[rt.rank :: rt.world], rt, batch_size,
                                                      scales, flip, f"pseudo-labels → {folder.name}"):
            labels[~keep_mask(confidence, labels, threshold, cutoffs)] = ignore_index
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
