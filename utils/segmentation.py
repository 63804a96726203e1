"""The CamVid experiment's task: SwiftNet on images in memory, mIoU, pseudo-labels as PNGs.

Everything here plugs into the shared loop of utils/selftrain.py; what is particular to
segmentation (crops with ignore padding, the confusion-matrix table, pseudo-label files, the
labeled/unlabeled split of the train images) lives in this file.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from data.camvid import STATISTICS, SegmentationSet, load_labels, load_split, load_unlabeled
from data.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from data.transforms import cutmix, photometric, scale_crop_flip
from models.swiftnet import convert_reference_state_dict, swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_fitting
from utils.config import Config
from utils.dist import Runtime
from utils.engine import (Batch, Forward, Phase, Source, cross_entropy, evaluate, local_crops, mixed_batches,
                          plain_forward, predict_probs, soft_targets)
from utils.pictures import prediction_pictures, pseudo_label_pictures
from utils.errors import UserError
from utils.io import probe_folder, write_json
from utils.pseudo import label_frames, pseudo_folder, pseudo_quality
from utils.records import Run
from utils.selftrain import Candidate, SelfTraining


def split_names(names: list[str], fraction: float, seed: int,
                by_sequence: bool = False) -> tuple[list[str], list[str]]:
    """The split protocol: a seeded `fraction` of the train images keeps its labels, the rest does not.

    `by_sequence` draws the labeled images from every video sequence in proportion to its share of
    train. CamVid's train images come from three sequences, one of which (0016E5) is also the whole
    val split; a plain draw of 23 images can take 18 of them from it, and val then rewards the
    models that fit that sequence.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"LABELED_FRACTION={fraction} must be in (0, 1], e.g. 1/8.")
    count = max(1, round(fraction * len(names)))
    generator = torch.Generator().manual_seed(seed)
    if by_sequence:
        chosen = _stratified_choice([sequence_of(name) for name in names], count, generator)
    else:
        chosen = set(torch.randperm(len(names), generator=generator)[:count].tolist())
    labeled = sorted(name for i, name in enumerate(names) if i in chosen)
    unlabeled = sorted(name for i, name in enumerate(names) if i not in chosen)
    return labeled, unlabeled


def sequence_of(name: str) -> str:
    """The video sequence of a CamVid file name: 0016E5_07959.png comes from 0016E5."""
    return name.split("_", 1)[0]


def _stratified_choice(groups: list[str], count: int, generator: torch.Generator) -> set[int]:
    """`count` indices, each group given its proportional quota (largest remainders take the seats
    left over, ties in random order), its members drawn at random."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    keys = sorted(members)
    exact = [count * len(members[key]) / len(groups) for key in keys]
    quotas = [int(share) for share in exact]
    tie_order = torch.randperm(len(keys), generator=generator).tolist()
    by_remainder = sorted(range(len(keys)), key=lambda k: (quotas[k] - exact[k], tie_order[k]))
    for k in by_remainder[: count - sum(quotas)]:
        quotas[k] += 1
    chosen: set[int] = set()
    for key, quota in zip(keys, quotas):
        order = torch.randperm(len(members[key]), generator=generator)[:quota].tolist()
        chosen.update(members[key][i] for i in order)
    return chosen


def read_split_file(path: str | Path, names: list[str]) -> tuple[list[str], list[str]]:
    try:
        split = json.loads(Path(path).read_text())
        labeled, unlabeled = list(split["labeled"]), list(split["unlabeled"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"SPLIT_FILE={path} cannot be read ({error}); it must be JSON with 'labeled' and "
                        "'unlabeled' lists of file names, like the split.json of a run directory.") from error
    if not labeled:
        raise UserError(f"SPLIT_FILE={path} lists no labeled images: the teacher needs some.")
    unknown = sorted(set(labeled + unlabeled) - set(names))
    if unknown or set(labeled) & set(unlabeled):
        raise UserError(f"SPLIT_FILE={path} does not fit the train images: unknown names {unknown[:3]}, "
                        f"{len(set(labeled) & set(unlabeled))} names both labeled and unlabeled.")
    return labeled, unlabeled


def feature_perturbed(count: int, feature_drop: float) -> Forward:
    """PSEUDO_FEATURE_DROP, UniMatch's feature perturbation: the last `count` crops of every batch (the
    pseudo-labeled ones) are decoded a second time from encoder features with `feature_drop` of their
    channels dropped, and learn the same targets there. The decoder cannot lean on a few channels, and the
    student has to agree with the teacher under a perturbation the input augmentations do not reach."""

    def forward(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Batch:
        return model(images, perturbed=count, feature_drop=feature_drop), torch.cat([target, target[-count:]])

    return forward


class CamVidSelfTraining(SelfTraining):
    metric_key = "val_iou"
    score_key = "miou"

    def __init__(self, cfg: Config, rt: Runtime, run: Run):
        super().__init__(cfg, rt, run)
        root = Path(cfg.data_root)
        train = load_split(root, "train", cfg.image_scale)
        self.val = self._place(load_split(root, "val", cfg.image_scale))
        self.test_set = self._place(load_split(root, "test", cfg.image_scale))
        labeled, unlabeled = self._divide(train, root)
        self.labeled = self._place(labeled)
        self.unlabeled = self._place(unlabeled) if unlabeled is not None else None
        self.pseudo: SegmentationSet | None = None
        if cfg.no_iter > 0 and rt.is_main:
            self._check_pseudo_root()

    def _pseudo_root(self) -> Path:
        return Path(self.cfg.pseudo_root or Path(self.cfg.data_root) / "unlabeled")

    def _check_pseudo_root(self) -> None:
        """Before the teacher trains for hours: the default place for pseudo-labels is inside the data folder."""
        try:
            probe_folder(self._pseudo_root())
        except OSError as error:
            raise UserError(f"Cannot write pseudo-labels into {self._pseudo_root()} ({error.strerror}). "
                            "Choose a writable place with --pseudo_root=PATH.") from error

    def _place(self, data: SegmentationSet) -> SegmentationSet:
        """On the GPU when DATA_ON_DEVICE, else in pinned host memory for a GPU run, else as it is."""
        if self.rt.device.type != "cuda":
            return data
        return data.to(self.rt.device) if self.cfg.data_on_device else data.pin_memory()

    def _divide(self, train: SegmentationSet, root: Path) -> tuple[SegmentationSet, SegmentationSet | None]:
        """Labeled images, and the unlabeled ones: a share of train (split protocol) or the frames folder."""
        cfg = self.cfg
        if cfg.labeled_fraction >= 1 and not cfg.split_file:
            if cfg.no_iter == 0:
                return train, None
            return train, load_unlabeled(root / "unlabeled" / "train", cfg.image_scale, cfg.max_unlabeled)
        if cfg.split_file:
            labeled, unlabeled = read_split_file(cfg.split_file, train.names)
        else:
            labeled, unlabeled = split_names(train.names, cfg.labeled_fraction, cfg.seed, cfg.split_by_sequence)
        if cfg.max_unlabeled > 0:
            unlabeled = unlabeled[: cfg.max_unlabeled]
        if self.rt.is_main:
            write_json(self.run.folder / "split.json", {"labeled": labeled, "unlabeled": unlabeled})
        position = {name: i for i, name in enumerate(train.names)}
        return (train.subset([position[n] for n in labeled]), train.subset([position[n] for n in unlabeled]))

    def new_model(self, fresh: bool = False) -> nn.Module:
        """A `fresh` model starts from INIT_CHECKPOINT, else from ImageNet (PRETRAINED) or from scratch;
        the others are about to load a checkpoint of this run."""
        cfg = self.cfg
        mean, std = STATISTICS[cfg.normalization]
        pretrained = fresh and cfg.pretrained and not cfg.init_checkpoint
        model = swiftnet_rn18(NUM_CLASSES, mean, std, pretrained, cfg.pretrained_path)
        if fresh and cfg.init_checkpoint:
            checkpoint = load_checkpoint(cfg.init_checkpoint)
            state = convert_reference_state_dict(checkpoint.get("state_dict", checkpoint))
            report = load_fitting(model, state, cfg.init_checkpoint)
            if self.rt.is_main:
                tqdm.write(report)
        return self.rt.prepare(model, cfg.sync_bn)

    # Batches: indexing the in-memory tensors, then augmenting on the device in one go.
    def _augmented(self, data: SegmentationSet, index: torch.Tensor, generator: torch.Generator, strong: bool,
                   soft: bool, teacher: nn.Module | None) -> Batch:
        device = self.rt.device
        images = data.images[index.to(data.images.device)].to(device, non_blocking=True)
        labels = data.labels[index.to(data.labels.device)].to(device, non_blocking=True)
        images, labels = scale_crop_flip(images, labels, self.cfg.crop_size, STATISTICS[self.cfg.normalization][0],
                                         IGNORE_INDEX, generator)
        if soft:
            labels = soft_targets(labels, NUM_CLASSES, IGNORE_INDEX, self.rt, teacher, images, self.alignment)
        if strong:
            images, labels = cutmix(photometric(images, generator), labels, generator)
        return images, labels

    def _source(self, data: SegmentationSet, strong: bool = False, soft: bool = False,
                teacher: nn.Module | None = None) -> Source:
        """`data` augmented; with `soft`, targets are distributions: `teacher`'s softmax, or one-hot without one."""
        return Source(len(data), lambda index, generator: self._augmented(data, index, generator, strong, soft,
                                                                          teacher))

    def _pseudo_source(self) -> Source:
        return self._source(self.pseudo, self.cfg.strong_aug, self.cfg.pseudo_soft, self.soft_teacher)

    def _phase(self, name: str, iteration: int, epochs: int, lr: float, sources: list[Source],
               shares: list[float] | None = None, pseudo_last: bool = False) -> Phase:
        """`pseudo_last`: the last source is the pseudo-labeled one, whose crops PSEUDO_FEATURE_DROP perturbs."""
        cfg = self.cfg
        steps, batches = mixed_batches(sources, cfg.batch_size, self.rt, shares)
        forward = plain_forward
        if pseudo_last and cfg.pseudo_feature_drop > 0:
            forward = feature_perturbed(local_crops(sources, cfg.batch_size, self.rt, shares)[-1],
                                        cfg.pseudo_feature_drop)
        return Phase(name=name, iteration=iteration, epochs=epochs, steps_per_epoch=steps, batches=batches,
                     loss_fn=lambda logits, target: cross_entropy(logits, target, IGNORE_INDEX),
                     make_optimizer=lambda params: torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay),
                     lr_min=cfg.lr_min, seed=cfg.seed * 1009 + zlib.crc32(name.encode()), forward=forward)

    def labeled_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        return self._phase(name, iteration, epochs, lr, [self._source(self.labeled)])

    def pseudo_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        return self._phase(name, iteration, epochs, lr, [self._pseudo_source()], pseudo_last=True)

    def joint_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        """Each batch mixes labeled and pseudo-labeled crops, JOINT_LABELED_SHARE of them labeled (ST++,
        Naive-Student)."""
        return self._phase(name, iteration, epochs, lr,
                           [self._source(self.labeled, soft=self.cfg.pseudo_soft), self._pseudo_source()],
                           self.joint_shares, pseudo_last=True)

    def labeled_class_counts(self) -> torch.Tensor:
        labels = self.labeled.labels
        return torch.bincount(labels[labels < NUM_CLASSES].long(), minlength=NUM_CLASSES).cpu()

    def validate(self, model: nn.Module) -> tuple[float, dict[str, Any]]:
        cm = evaluate(model, self.val.images, self.val.labels, NUM_CLASSES, self.cfg.eval_batch_size, self.rt)
        return cm.miou(), {"val_miou": cm.miou(), "val_per_class_iou": cm.summary(CLASS_NAMES)["per_class_iou"]}

    def test(self, model: nn.Module, title: str) -> dict[str, Any]:
        cm = evaluate(model, self.test_set.images, self.test_set.labels, NUM_CLASSES, self.cfg.eval_batch_size,
                      self.rt)
        if self.rt.is_main:
            tqdm.write(f"\nTest set, {title}:\n{cm.table(CLASS_NAMES)}\n")
        summary = cm.summary(CLASS_NAMES)
        return {"test_miou": summary["miou"], "test_pixel_acc": summary["pixel_acc"],
                "per_class_iou": summary["per_class_iou"]}

    def _picture_indices(self, n: int) -> list[int]:
        """The same few images every time, spread over the set, so pictures compare across iterations."""
        count = min(self.cfg.pictures, n)
        return [round(i * (n - 1) / max(count - 1, 1)) for i in range(count)]

    def pictures(self, model: nn.Module, tag: str) -> None:
        index = self._picture_indices(len(self.val))
        if index and self.rt.is_main:
            val = self.val.subset(index)
            prediction_pictures(model, val.images, val.labels, val.names, self.run.folder / "pictures" / tag, self.rt)

    def _pseudo_pictures(self, teacher: nn.Module, iteration: int) -> None:
        index = self._picture_indices(len(self.pseudo))
        if index and self.rt.is_main:
            frames = self.pseudo.subset(index)
            confidence = predict_probs(teacher, frames.images, self.rt).max(1).values.cpu()
            pseudo_label_pictures(frames.images, frames.labels, confidence, frames.names,
                                  self.run.folder / "pictures" / f"it{iteration}_pseudo")

    def pseudo_label(self, teacher: nn.Module, iteration: int, teacher_info: Candidate) -> dict[str, Any]:
        cfg = self.cfg
        if self.unlabeled is None or len(self.unlabeled) == 0:
            raise UserError("There are no unlabeled images to pseudo-label: put frames in "
                            f"{Path(cfg.data_root) / 'unlabeled' / 'train'} or use --labeled_fraction=1/8.")
        folder = pseudo_folder(self._pseudo_root(), iteration)
        identity = {"run": str(self.run.folder), "teacher": str(teacher_info.path), "teacher_val": teacher_info.val,
                    "threshold": cfg.pseudo_threshold, "class_share": cfg.pseudo_class_share, "tta": cfg.pseudo_tta,
                    "tta_scales": cfg.tta_scales, "image_scale": cfg.image_scale, "frames": len(self.unlabeled)}
        scales = cfg.tta_scales if cfg.pseudo_tta else [1.0]
        kept = label_frames(teacher, self.unlabeled, folder, identity, self.rt, IGNORE_INDEX, cfg.eval_batch_size,
                            cfg.pseudo_threshold, scales, flip=cfg.pseudo_tta, class_share=cfg.pseudo_class_share,
                            image_share=cfg.pseudo_image_share)
        frames = self.unlabeled
        if len(kept) < len(frames):  # a copy of the kept frames; all of them need none
            position = {name: i for i, name in enumerate(frames.names)}
            frames = frames.subset([position[name] for name in kept])
        labels = load_labels([folder / f"{name}.png" for name in kept], cfg.image_scale).to(frames.images.device)
        self.pseudo = SegmentationSet(frames.images, labels, frames.names, frames.source_size)
        self._pseudo_pictures(teacher, iteration)
        truth = None if frames.labels is None else frames.labels.cpu()
        return {**pseudo_quality(labels.cpu(), truth, NUM_CLASSES, IGNORE_INDEX), "pseudo_frames": len(kept)}
