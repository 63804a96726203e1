"""Pseudo-labels: which predictions to keep, the files they are written to, soft targets and the mean teacher.

Segmentation pseudo-labels are class-index PNGs, one per unlabeled frame, at that frame's own size on disk. Files are
written atomically, so after a kill a re-run writes just the missing ones; a manifest names the teacher and options
that made the folder, and a folder made by another is cleared rather than mixed.
"""
from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from utils.dist import Runtime
from utils.engine import predict_probs
from utils.errors import UserError
from utils.io import read_json, remove_temporary_files, write_json, write_png
from utils.metrics import ConfusionMatrix

MANIFEST = "pseudo.json"
RELIABILITY = "reliability.json"


class Frames(Protocol):
    """What pseudo-labeling needs of a set of frames (data.segmentation.SegmentationSet has it): their names and
    sizes on disk, and batches of frames of one size."""

    names: list[str]
    source_sizes: list[tuple[int, int]]  # (width, height)

    def groups(self, batch_size: int, indices: Sequence[int] | None = None) -> list[list[int]]: ...

    def stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def image_reliability(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image of a (N, H, W) batch, the mean over its predicted classes of their mean confidence.

    ST++ (Yang et al., CVPR 2022) keeps the images the teacher is reliable on instead of thresholding
    pixels, which drops thin classes. Each class counts once, so an image of mostly sky and road is not
    called reliable while its few pedestrians are guesses.
    """
    count = labels.shape[0]
    flat = labels.reshape(count, -1).long()
    sums = torch.zeros(count, num_classes, device=labels.device).scatter_add_(
        1, flat, confidence.reshape(count, -1).float())
    pixels = torch.zeros(count, num_classes, device=labels.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float))
    return (sums / pixels.clamp(min=1)).sum(1) / (pixels > 0).sum(1)


def most_reliable(scores: dict[str, float], share: float) -> set[str]:
    """The names of the `share` of images with the highest reliability (at least one), ties by name."""
    ranked = sorted(scores, key=lambda name: (-scores[name], name))
    return set(ranked[: max(1, round(share * len(ranked)))])


def pseudo_folder(root: str | Path, iteration: int) -> Path:
    folder = Path(root) / f"train_pseudoIt{iteration}"
    if folder.name.endswith("_labels") or folder.parent.name.endswith("_labels"):
        raise UserError(f"Refusing to write pseudo-labels into {folder}: *_labels folders hold ground truth.")
    return folder


def _is_complete(path: Path, size: tuple[int, int]) -> bool:
    """Decoded whole: a truncated file (a copy cut short, a full disk) is written again."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == size and image.mode == "L"
    except (OSError, SyntaxError, ValueError):
        return False


def label_frames(model: nn.Module, frames: Frames, folder: Path, identity: dict[str, Any], rt: Runtime,
                 ignore_index: int, num_classes: int, batch_size: int, threshold: float = 0.0,
                 scales: Sequence[float] = (1.0,), flip: bool = False, image_share: float = 1.0) -> list[str]:
    """Writes `folder/<name>.png`, at the frame's size on disk, for every frame not already there; each process
    takes its share. A folder that another teacher or other options (`identity`) made is cleared.
    Returns the frames the student learns from: all, or with `image_share` < 1 that share with the highest
    `image_reliability` (kept in `folder/reliability.json` from a first pass over all frames).
    """
    names = frames.names
    # The folder belongs to these very frames, not only to this many: another split or frame folder with
    # the same count must not reuse its files or the reliability scores, which are keyed by name.
    identity = {**identity, "frame_names_crc32": zlib.crc32("\n".join(names).encode())}
    try:
        if rt.is_main:
            same = read_json(folder / MANIFEST) == identity
            folder.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(folder)  # those a killed run left behind
            if not same:
                for stale in folder.glob("*.png"):
                    stale.unlink()
                (folder / RELIABILITY).unlink(missing_ok=True)
                write_json(folder / MANIFEST, identity)
        rt.barrier()
        if image_share < 1 and rt.broadcast(not (folder / RELIABILITY).is_file() if rt.is_main else None):
            reliability = torch.zeros(len(names), device=rt.device)
            for index, confidence, labels in _predictions(model, frames, range(rt.rank, len(names), rt.world), rt,
                                                          batch_size, scales, flip, "reliability"):
                reliability[index] = image_reliability(confidence, labels, num_classes).to(rt.device)
            if rt.distributed:
                torch.distributed.all_reduce(reliability)
            if rt.is_main:
                write_json(folder / RELIABILITY, {"reliability": dict(zip(names, reliability.tolist()))})
        # Rank 0 lists what is missing for everyone: a rank listing later would see rank 0's new files.
        paths = [folder / f"{name}.png" for name in names]
        todo = rt.broadcast([i for i, path in enumerate(paths) if not _is_complete(path, frames.source_sizes[i])]
                            if rt.is_main else None)
        with ThreadPoolExecutor(max_workers=4) as writer:
            pending = []
            for index, confidence, labels in _predictions(model, frames, todo[rt.rank :: rt.world], rt, batch_size,
                                                          scales, flip, f"pseudo-labels → {folder.name}"):
                labels[confidence < threshold] = ignore_index
                labels = labels.to(torch.uint8).cpu().numpy()
                pending += [writer.submit(write_png, paths[i], labels[k]) for k, i in enumerate(index)]
            for job in pending:
                job.result()
    except OSError as error:
        raise UserError(f"Cannot write pseudo-labels into {folder} ({error.strerror or error}). Choose a writable "
                        "place with --pseudo_root=PATH (or free some disk space) and re-run to resume.") from error
    rt.barrier()
    if image_share >= 1:
        return list(names)
    kept = most_reliable(json.loads((folder / RELIABILITY).read_text())["reliability"], image_share)
    return [name for name in names if name in kept]


def _predictions(model: nn.Module, frames: Frames, indices: Sequence[int], rt: Runtime, batch_size: int,
                 scales: Sequence[float], flip: bool,
                 desc: str) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(frame indices, confidence, argmax) per batch of frames of one size, at their size on disk."""
    for index in tqdm(frames.groups(batch_size, indices), desc=desc, leave=False, disable=not rt.is_main,
                      dynamic_ncols=True):
        probs = predict_probs(model, frames.stack(index)[0], rt, scales, flip)
        width, height = frames.source_sizes[index[0]]
        if probs.shape[-2:] != (height, width):
            probs = F.interpolate(probs, (height, width), mode="bilinear", align_corners=False)
        confidence, labels = probs.max(1)
        yield index, confidence, labels


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


def soft_targets(labels: torch.Tensor, num_classes: int, ignore_index: int, rt: Runtime,
                 teacher: nn.Module | None = None, images: torch.Tensor | None = None) -> torch.Tensor:
    """Class distributions (B,C,...) for PSEUDO_SOFT, all zero where `labels` is ignore: with a `teacher`,
    its softmax on these very `images` (the crops before any strong augmentation), so the student learns how
    sure the teacher is (Noisy Student); without one, `labels` one-hot, for labeled crops in the same batch.
    """
    keep = (labels != ignore_index).unsqueeze(1)
    if teacher is None:
        distributions = F.one_hot(labels.masked_fill(~keep.squeeze(1), 0), num_classes).movedim(-1, 1).float()
    else:
        distributions = predict_probs(teacher, images, rt).clone()  # a normal tensor, not an inference one
    return distributions * keep


@torch.no_grad()
def confident_predictions(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The confidence (softmax maximum, in fp32) and the class `model` gives each pixel (or image) in eval mode,
    without gradient: the online students' targets. The model's mode is left as it was."""
    training = model.training
    model.eval()
    confidence, labels = model(images).float().softmax(1).max(1)
    model.train(training)
    return confidence, labels


class MeanTeacher:
    """The teacher of PSEUDO_EMA: after every optimizer step its weights and BatchNorm statistics move
    towards the student's (Mean Teacher), so its targets improve with the student instead of repeating
    the first teacher's mistakes. Averaging needs a shared start: the student starts from this teacher
    (STUDENT_INIT="teacher"). The tensors are paired once; loading or stepping copies into them in place.
    """

    def __init__(self, model: nn.Module, student: nn.Module, momentum: float):
        self.model, self.momentum = model, momentum
        theirs = student.state_dict()
        pairs = [(mine, theirs[name]) for name, mine in self.model.state_dict().items()]
        self._mine = [mine for mine, _ in pairs if mine.is_floating_point()]
        self._theirs = [their for mine, their in pairs if mine.is_floating_point()]
        self._counters = [(mine, their) for mine, their in pairs if not mine.is_floating_point()]  # BatchNorm's

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._mine, self._theirs, 1 - self.momentum)  # one kernel launch per group of tensors
        for mine, theirs in self._counters:
            mine.copy_(theirs)
