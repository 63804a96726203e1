"""The CIFAR-10 experiment's task: a CIFAR ResNet-18 on the whole data set held in memory.

As in the fastest CIFAR-10 trainers, the 60k uint8 images live on the device (GPU when there
is one) and every batch is indexed and augmented there; no DataLoader, no per-sample Python.
Pseudo-labels are a tensor file in the run directory: one label and confidence per unlabeled
image, images below the confidence threshold (lowered per class with a class share) left out of
the student's training set.
"""
from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from data.cifar import load_cifar10, split_labeled
from data.transforms import cutout, photometric, translate_flip
from models.resnet_cifar import CIFAR_MEAN, ResNet18
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import Config
from utils.confidence import class_cutoffs, confidence_histogram, keep_mask
from utils.dist import Runtime
from utils.engine import Batch, Phase, Source, cross_entropy, evaluate, mixed_batches, predict_probs, soft_targets
from utils.io import write_json
from utils.records import Run
from utils.selftrain import Candidate, SelfTraining


class CifarSelfTraining(SelfTraining):
    metric_key = "val_acc"
    score_key = "acc"

    def __init__(self, cfg: Config, rt: Runtime, run: Run):
        super().__init__(cfg, rt, run)
        data = load_cifar10(cfg.data_root, download=not cfg.demo)
        self.class_names = data.class_names
        labeled, rest = split_labeled(data.train_labels, cfg.labeled_fraction, cfg.balanced_split, cfg.seed)
        # Model selection needs labels that training never sees: VAL_SIZE images of the unlabeled part.
        shuffled = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(cfg.seed + 1))]
        val, unlabeled = shuffled[: cfg.val_size].sort().values, shuffled[cfg.val_size :].sort().values
        if cfg.max_unlabeled > 0:
            unlabeled = unlabeled[: cfg.max_unlabeled]
        if rt.is_main:
            write_json(run.folder / "split.json", {"labeled": labeled.tolist(), "val": val.tolist(),
                                                   "unlabeled": unlabeled.tolist()})
        device = rt.device if cfg.data_on_device else torch.device("cpu")
        images, labels = data.train_images.to(device), data.train_labels.to(device)
        self.labeled = (images[labeled.to(device)], labels[labeled.to(device)])
        self.val = (images[val.to(device)], labels[val.to(device)])
        self.unlabeled = (images[unlabeled.to(device)], labels[unlabeled.to(device)])  # labels: quality only
        self.test_set = (data.test_images.to(device), data.test_labels.to(device))
        self.pseudo: tuple[torch.Tensor, torch.Tensor] | None = None

    def new_model(self, fresh: bool = False) -> nn.Module:
        return self.rt.prepare(ResNet18(len(self.class_names), self.cfg.width), self.cfg.sync_bn)

    def _augmented(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                   generator: torch.Generator, strong: bool, soft: bool, teacher: nn.Module | None) -> Batch:
        index = index.to(images.device)
        x = translate_flip(images[index].to(self.rt.device, non_blocking=True), 4, generator)
        y = labels[index].to(self.rt.device, non_blocking=True)
        if soft:
            y = soft_targets(y, len(self.class_names), -100, self.rt, teacher, x, self.alignment)
        if strong:
            x = cutout(photometric(x, generator), 16, generator, CIFAR_MEAN)
        return x, y

    def _source(self, data: tuple[torch.Tensor, torch.Tensor], strong: bool = False, soft: bool = False,
                teacher: nn.Module | None = None) -> Source:
        """`data` augmented; with `soft`, targets are distributions: `teacher`'s softmax, or one-hot without one."""
        return Source(len(data[0]), partial(self._augmented, *data, strong=strong, soft=soft, teacher=teacher))

    def _pseudo_source(self) -> Source:
        return self._source(self.pseudo, self.cfg.strong_aug, self.cfg.pseudo_soft, self.soft_teacher)

    def _phase(self, name: str, iteration: int, epochs: int, lr: float, sources: list[Source],
               monitor: Callable[[nn.Module], dict[str, Any]] | None = None,
               shares: list[float] | None = None) -> Phase:
        """A phase over `sources`, mixed by `shares`."""
        cfg = self.cfg
        steps, batches = mixed_batches(sources, cfg.batch_size, self.rt, shares)
        return Phase(name=name, iteration=iteration, epochs=epochs, steps_per_epoch=steps, batches=batches,
                     loss_fn=cross_entropy,
                     make_optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                                                   weight_decay=cfg.weight_decay),
                     lr_min=cfg.lr_min, seed=cfg.seed * 1009 + zlib.crc32(name.encode()), monitor=monitor)

    def labeled_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        return self._phase(name, iteration, epochs, lr, [self._source(self.labeled)])

    def pseudo_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        return self._phase(name, iteration, epochs, lr, [self._pseudo_source()], self._agreement)

    def joint_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        return self._phase(name, iteration, epochs, lr,
                           [self._source(self.labeled, soft=self.cfg.pseudo_soft), self._pseudo_source()],
                           self._agreement, self.joint_shares)

    def _accuracy(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        cm = evaluate(model, images, labels, len(self.class_names), self.cfg.eval_batch_size, self.rt)
        return cm.accuracy()

    def _agreement(self, model: nn.Module) -> dict[str, Any]:
        """How often the student agrees with its pseudo-labels (the thesis printed this every epoch)."""
        images, labels = self.pseudo
        return {"pseudo_agreement": self._accuracy(model, images[:10000], labels[:10000])}

    def labeled_class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labeled[1].long().cpu(), minlength=len(self.class_names))

    def validate(self, model: nn.Module) -> tuple[float, dict[str, Any]]:
        accuracy = self._accuracy(model, *self.val)
        return accuracy, {"val_acc": accuracy}

    def test(self, model: nn.Module, title: str) -> dict[str, Any]:
        accuracy = self._accuracy(model, *self.test_set)
        if self.rt.is_main:
            tqdm.write(f"Test accuracy, {title}: {accuracy:.2f}%")
        return {"test_acc": accuracy}

    def pseudo_label(self, teacher: nn.Module, iteration: int, teacher_info: Candidate) -> dict[str, Any]:
        """Hard labels for every unlabeled image, computed once per iteration and kept in the run directory."""
        cfg = self.cfg
        path = self.run.folder / f"pseudo_it{iteration}.pth.tar"
        identity = {"teacher": str(teacher_info.path), "teacher_val": teacher_info.val}
        stored = load_checkpoint(path) if path.is_file() else None
        if stored is None or stored["identity"] != identity:
            images = self.unlabeled[0]
            probs = torch.cat([predict_probs(teacher, images[i : i + cfg.eval_batch_size], self.rt)
                               for i in range(0, len(images), cfg.eval_batch_size)])
            confidence, labels = probs.max(1)
            stored = {"labels": labels.cpu(), "confidence": confidence.cpu(), "identity": identity}
            if self.rt.is_main:
                save_checkpoint(path, **stored)
        labels, confidence = stored["labels"], stored["confidence"]
        cutoffs = None
        if cfg.pseudo_class_share > 0:
            histogram = confidence_histogram(confidence, labels, len(self.class_names))
            cutoffs = class_cutoffs(histogram, cfg.pseudo_class_share)
        keep = keep_mask(confidence, labels, cfg.pseudo_threshold, cutoffs)
        images, truth = self.unlabeled
        kept = keep.to(images.device)
        self.pseudo = (images[kept], labels.to(images.device)[kept])
        correct = (labels[keep] == truth.cpu()[keep]).float()
        return {"pseudo_acc": float(correct.mean() * 100) if len(correct) else None,
                "pseudo_all_acc": float((labels == truth.cpu()).float().mean() * 100),
                "pseudo_kept_frac": float(keep.float().mean() * 100)}
