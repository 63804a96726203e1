"""Training and evaluation, shared by the CamVid and the CIFAR-10 experiments.

`fit` runs one phase (the teacher, a student's pseudo-label epochs, its fine-tuning) from
wherever the run directory says it stopped: it restores model, optimizer, scheduler and random
states from the phase's last checkpoint, writes that checkpoint after every evaluation and at
least once a minute (`RESUME_SAVE_EVERY_S`), keeps the best validation checkpoint, and records the
phase as done. Everything a phase needs that differs between the tasks (the batches, the
optimizer, the validation) is passed in.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.dist import Runtime
from utils.errors import UserError
from utils.metrics import ConfusionMatrix
from utils.records import Run

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainingDiverged(UserError):
    pass


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean over the pixels (or samples) that are not ignored; 0 when a batch is all ignored.

    `target` holds class indices, or class distributions shaped like `logits` (PSEUDO_SOFT), where
    an all-zero distribution is the ignored pixel. PyTorch's mean reduction divides by zero on an
    all-ignored batch and poisons the weights with NaN, which a high pseudo-label threshold makes likely.
    """
    if target.is_floating_point():
        total = F.cross_entropy(logits.float(), target, reduction="sum")
        return total / target.sum().clamp(min=1)
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


class DistributionAlignment:
    """PSEUDO_ALIGN: ReMixMatch's distribution alignment of the soft targets. Each target is scaled class
    by class by `prior / running` and renormalised, where `prior` is the labeled set's class frequency
    and `running` the mean of the teacher's predictions over the last hundred or so pseudo-labeled batches.

    Self-training drifts towards the frequent classes: where sidewalk and road are both plausible, a
    student that learns the teacher's leaning, and a teacher that follows the student (PSEUDO_EMA),
    lean further at every step. Holding the targets' class marginal to the labeled set's pulls the
    rarer class back as soon as the predictions start to lose it. `running` starts at the prior (no
    correction) and is kept in the phase's checkpoint, so a resumed phase aligns as the whole one did.
    """

    momentum = 0.99  # the running mean covers about 1 / (1 - momentum) batches

    def __init__(self, class_counts: torch.Tensor, rt: Runtime):
        counts = class_counts.double() + 1  # a class the labeled crops happen to lack keeps a little weight
        self.prior = (counts / counts.sum()).float().to(rt.device)
        self.running = self.prior.clone()
        self.rt = rt

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """`probs` (B,C,...) aligned; `keep` (B,1,...) marks the pixels (or samples) that count."""
        dims = [d for d in range(probs.ndim) if d != 1]
        sums = torch.cat([(probs * keep).sum(dims), keep.sum().view(1).to(probs.dtype)])
        if self.rt.distributed:  # every process aligns by the same mean, that of the whole batch
            torch.distributed.all_reduce(sums)
        marginal = sums[:-1] / sums[-1].clamp(min=1)
        self.running = torch.where(sums[-1] > 0, self.running.lerp(marginal, 1 - self.momentum), self.running)
        shape = [1] * probs.ndim
        shape[1] = -1
        aligned = probs * (self.prior / self.running.clamp(min=1e-6)).view(shape)
        return aligned / aligned.sum(1, keepdim=True).clamp(min=1e-12)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"running": self.running}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.running = state["running"].to(self.prior.device)


def soft_targets(labels: torch.Tensor, num_classes: int, ignore_index: int, rt: Runtime,
                 teacher: nn.Module | None = None, images: torch.Tensor | None = None,
                 alignment: DistributionAlignment | None = None) -> torch.Tensor:
    """Class distributions (B,C,...) for PSEUDO_SOFT, all zero where `labels` is ignore.

    With a `teacher`, its softmax on these very `images` (the augmented pseudo-labeled crops, before
    any strong augmentation), aligned by `alignment` if given: the student then learns how sure the
    teacher is, not only its argmax, as Noisy Student's soft pseudo-labels. Without one, `labels`
    one-hot (never aligned), so that labeled crops can share a batch with them.
    """
    keep = (labels != ignore_index).unsqueeze(1)
    if teacher is None:
        distributions = F.one_hot(labels.masked_fill(~keep.squeeze(1), 0), num_classes).movedim(-1, 1).float()
    else:
        distributions = predict_probs(teacher, images, rt).clone()  # a normal tensor, not an inference one
        if alignment is not None:
            distributions = alignment(distributions, keep)
    return distributions * keep


def batch_indices(n: int, batch_size: int, generator: torch.Generator, rt: Runtime) -> torch.Tensor:
    """A shuffled epoch as (steps, about batch_size / world) indices: this process's share of each batch.

    The last incomplete batch is dropped (BatchNorm dislikes tiny batches); a set smaller than one
    batch gives one batch of all of it.
    """
    order = torch.randperm(n, generator=generator)
    batch_size = min(batch_size, n)
    steps = n // batch_size
    batches = order[: steps * batch_size].view(steps, batch_size)
    return batches[:, rt.rank :: rt.world]


@dataclass
class Source:
    """A training set seen through its augmentation: `augment(indices, generator)` gives a batch."""

    size: int
    augment: Callable[[torch.Tensor, torch.Generator], Batch]


def batch_split(batch_size: int, shares: Sequence[float]) -> list[int]:
    """Crops per source in one batch: `shares` of `batch_size`, rounded, at least one from each source."""
    counts: list[int] = []
    for share in shares[:-1]:
        later = len(shares) - len(counts) - 1  # sources still to come, a crop kept for each
        counts.append(min(max(1, round(batch_size * share)), batch_size - sum(counts) - later))
    return counts + [max(1, batch_size - sum(counts))]


def _source_counts(sources: Sequence[Source], batch_size: int, shares: Sequence[float] | None) -> list[int]:
    return batch_split(batch_size, shares or [1 / len(sources)] * len(sources))


def mixed_batches(sources: Sequence[Source], batch_size: int, rt: Runtime,
                  shares: Sequence[float] | None = None) -> tuple[int, Callable[[torch.Generator], Iterator[Batch]]]:
    """Batches of `batch_size` drawn from `sources` in proportion to `shares` (default: evenly).

    One source is plain training; two (labeled, pseudo-labeled) is the joint schedule of ST++ and
    Naive-Student, where the smaller set is cycled. An epoch is one pass over the source that takes
    the most batches to go through. Returns (steps per epoch, batches).
    """
    if any(source.size == 0 for source in sources):
        raise UserError("A training set of this phase is empty: check the labeled split and the unlabeled images.")
    counts = _source_counts(sources, batch_size, shares)
    if min(counts) < rt.world:
        raise UserError(f"A batch of {batch_size} ({' + '.join(map(str, counts))} crops from the phase's sets) cannot "
                        f"give each of the {rt.world} processes a crop of every set: raise --batch_size (the batch "
                        "of all processes together) or, in the joint schedule, move --joint_labeled_share towards 0.5.")
    steps = max(source.size // min(count, source.size) for source, count in zip(sources, counts))

    def batches(generator: torch.Generator) -> Iterator[Batch]:
        def endless(n: int, count: int) -> Iterator[torch.Tensor]:
            while True:
                yield from batch_indices(n, count, generator, rt)

        streams = [endless(source.size, count) for source, count in zip(sources, counts)]
        for _ in range(steps):
            parts = [source.augment(next(stream), generator) for source, stream in zip(sources, streams)]
            yield torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])

    return steps, batches


def local_crops(sources: Sequence[Source], batch_size: int, rt: Runtime,
                shares: Sequence[float] | None = None) -> list[int]:
    """Crops of each source in this process's part of a `mixed_batches` batch, in the batch's order."""
    counts = _source_counts(sources, batch_size, shares)
    return [len(range(rt.rank, min(count, source.size), rt.world)) for source, count in zip(sources, counts)]


class MeanTeacher:
    """The teacher of PSEUDO_EMA: after every optimizer step its weights move towards the student's,
    `weights = momentum * weights + (1 - momentum) * student` (Mean Teacher), so the targets it gives
    improve with the student instead of repeating the first teacher's mistakes.

    Averaging weights only makes sense between models that share their starting point: the student
    must start from this teacher (STUDENT_INIT="teacher"). BatchNorm statistics are averaged alike.
    The tensors are paired once: loading a checkpoint or stepping copies into them in place.
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


Forward = Callable[[nn.Module, torch.Tensor, torch.Tensor], Batch]


def plain_forward(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Batch:
    """A batch's logits and the targets they learn: the usual step."""
    return model(images), target


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], steps: int, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, loss_fn: Callable, rt: Runtime,
                    desc: str = "train", after_step: Callable[[], None] | None = None,
                    forward: Forward = plain_forward) -> float:
    """One pass over `batches`; returns the mean loss (one device sync per epoch, plus the bar's)."""
    model.train()
    total = torch.zeros((), device=rt.device)
    bar = tqdm(batches, total=steps, desc=desc, leave=False, disable=not rt.is_main, dynamic_ncols=True)
    for step, (images, target) in enumerate(bar):
        with rt.autocast():
            loss = loss_fn(*forward(model, images, target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        total += loss.detach()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if rt.distributed:
        torch.distributed.all_reduce(total)
        total /= rt.world
    return total.item() / max(steps, 1)


@torch.inference_mode()
def predict_probs(model: nn.Module, images: torch.Tensor, rt: Runtime, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax of one batch, averaged over `scales` and, with `flip`, horizontal mirroring.

    Segmentation logits are resized back to the input size before averaging; classification
    logits (B,C) need no resizing, and mirrored images give them a second view just the same.
    """
    model.eval()
    images = images.to(rt.device, non_blocking=True)
    size = images.shape[-2:]
    total = None
    views = 0
    for scale in scales:
        scaled = images.float() if scale == 1 else F.interpolate(images.float(), scale_factor=scale,
                                                                  mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            with rt.autocast():
                logits = model(scaled.flip(-1) if mirrored else scaled).float()
            if logits.ndim == 4:
                logits = logits.flip(-1) if mirrored else logits
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
            probs = logits.softmax(1)
            total = probs if total is None else total + probs
            views += 1
    return total / views


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int,
             rt: Runtime) -> ConfusionMatrix:
    """Confusion matrix of `model` on a labeled set, each process taking every world-th batch."""
    model.eval()
    cm = ConfusionMatrix(num_classes, rt.device)
    starts = range(rt.rank * batch_size, len(images), batch_size * rt.world)
    for start in tqdm(starts, desc="eval", leave=False, disable=not rt.is_main, dynamic_ncols=True):
        batch = images[start : start + batch_size].to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(batch)
        cm.update(labels[start : start + batch_size].to(rt.device, non_blocking=True), logits.argmax(1))
    cm.reduce()
    return cm


@dataclass
class Phase:
    """What one phase trains on and how. `batches(generator)` yields an epoch of augmented batches."""

    name: str
    iteration: int
    epochs: int
    steps_per_epoch: int
    batches: Callable[[torch.Generator], Iterator[Batch]]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
    lr_min: float
    seed: int
    # Extra numbers for the records at each evaluation, e.g. agreement with the pseudo-labels.
    monitor: Callable[[nn.Module], dict[str, Any]] | None = None
    # The teacher that follows the model (PSEUDO_EMA); kept in the phase's last checkpoint.
    mean_teacher: MeanTeacher | None = None
    # The running class mean of PSEUDO_ALIGN, which the batches update; kept in the last checkpoint too.
    alignment: DistributionAlignment | None = None
    # How a batch becomes logits and their targets (PSEUDO_FEATURE_DROP adds perturbed ones).
    forward: Forward = plain_forward


@dataclass
class Best:
    """Where the best checkpoint of a model goes and which score it has to beat."""

    path: Path
    metric: str  # the thesis's field name: val_iou or val_acc
    score: float = -math.inf
    epoch: int = 0


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _companions(phase: Phase) -> dict[str, Any]:
    """What the phase's checkpoints keep beside the model: the mean teacher, PSEUDO_ALIGN's running mean."""
    state: dict[str, Any] = {}
    if phase.mean_teacher is not None:
        state["mean_teacher"] = phase.mean_teacher.model.state_dict()
    if phase.alignment is not None:
        state["alignment"] = phase.alignment.state_dict()
    return state


# The resume checkpoint holds the optimizer state (141 MB for SwiftNet-RN18 with Adam). Saving it
# took about 0.34 s, a third of a two-step epoch of a 23-image teacher; between evaluations it is
# written once this many seconds have passed, the most training a kill can cost.
RESUME_SAVE_EVERY_S = 60.0


def fit(model: nn.Module, phase: Phase, best: Best, run: Run, rt: Runtime,
        validate: Callable[[nn.Module], tuple[float, dict[str, Any]]], eval_each: int,
        compile_model: bool = False) -> dict[str, Any]:
    """Trains `model` through `phase`, resuming it if it was interrupted, skipping it if it is done.

    On return `model` holds the phase's final weights and `best` the best score seen (its
    checkpoint on disk). Returns the phase's record: best score and epoch, final loss, seconds.
    """
    last_path = run.last_checkpoint(phase.name)
    finished = run.done(phase.name)
    if finished is not None:
        load_weights(model, load_checkpoint(last_path), last_path)
        best.score, best.epoch = finished["best_score"], finished["best_epoch"]
        return finished

    optimizer = phase.make_optimizer(model.parameters())
    total_steps = max(1, phase.epochs * phase.steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps, eta_min=phase.lr_min)
    generator = torch.Generator().manual_seed(phase.seed)
    start_epoch, seconds, loss = 0, 0.0, math.nan
    if last_path.is_file():
        state = load_checkpoint(last_path)
        load_weights(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], generator)
        start_epoch, seconds, loss = state["epoch"], state["seconds"], state["loss"]
        best.score, best.epoch = state["best_score"], state["best_epoch"]
        if phase.mean_teacher is not None:
            phase.mean_teacher.model.load_state_dict(state["mean_teacher"])
        if phase.alignment is not None:
            phase.alignment.load_state_dict(state["alignment"])

    train_model = rt.wrap(model)
    if compile_model:
        train_model = torch.compile(train_model)
    after_step = None if phase.mean_teacher is None else phase.mean_teacher.update
    bar = tqdm(range(start_epoch + 1, phase.epochs + 1), desc=phase.name, initial=start_epoch, total=phase.epochs,
               disable=not rt.is_main, dynamic_ncols=True)
    last_saved = time.monotonic()
    for epoch in bar:
        began = time.perf_counter()
        loss = train_one_epoch(train_model, phase.batches(generator), phase.steps_per_epoch, optimizer, scheduler,
                               phase.loss_fn, rt, desc=f"epoch {epoch}", after_step=after_step,
                               forward=phase.forward)
        if not math.isfinite(loss):
            kept = (f"The last good state is kept in {last_path}; a re-run resumes from it"
                    if last_path.is_file() else "No epoch of this phase had finished, so nothing was saved")
            raise TrainingDiverged(f"The loss of phase {phase.name} became {loss} in epoch {epoch}. {kept}. "
                                   "Lower the learning rate (a changed config needs --resume=False or another "
                                   "--run_dir) and run again.")
        seconds += time.perf_counter() - began
        entry = {"phase": phase.name, "iteration": phase.iteration, "epoch": epoch, "loss": loss,
                 "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3)}
        rt.sync_buffers(model)
        if phase.mean_teacher is not None:  # it averaged each process's own statistics into its buffers
            rt.sync_buffers(phase.mean_teacher.model)
        evaluated = epoch % eval_each == 0 or epoch == phase.epochs
        if evaluated:
            score, details = validate(model)
            entry.update(score=score, **details, **(phase.monitor(model) if phase.monitor else {}))
            if phase.mean_teacher is not None:  # often the better model of the two (Mean Teacher)
                entry["mean_teacher_score"] = validate(phase.mean_teacher.model)[0]
            if score > best.score:
                best.score, best.epoch = score, epoch
                if rt.is_main:
                    save_checkpoint(best.path, iteration=phase.iteration, epoch=epoch, phase=phase.name,
                                    state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                                    **{best.metric: score}, config=dict(run.config), run_id=run.id)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.2f}", best=f"{best.score:.2f}")
        run.log(**entry)
        if rt.is_main and (evaluated or time.monotonic() - last_saved >= RESUME_SAVE_EVERY_S):
            last_saved = time.monotonic()
            save_checkpoint(last_path, phase=phase.name, iteration=phase.iteration, epoch=epoch,
                            state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), rng=_rng_state(generator), loss=loss,
                            seconds=seconds, best_score=best.score, best_epoch=best.epoch, config=dict(run.config),
                            **_companions(phase))
        rt.barrier()
    result = {"best_score": best.score, "best_epoch": best.epoch, "epochs": phase.epochs, "loss": loss,
              "seconds": round(seconds, 3)}
    # Marked done first: a kill before the slimming below leaves a full checkpoint of the same weights.
    run.mark_done(phase.name, result)
    if rt.is_main:
        # The optimizer state is only needed to resume inside the phase: keep the final weights alone
        # (and those of the mean teacher, which one may want to evaluate, and where alignment ended).
        save_checkpoint(last_path, phase=phase.name, iteration=phase.iteration, epoch=phase.epochs,
                        state_dict=model.state_dict(), best_score=best.score, config=dict(run.config),
                        **_companions(phase))
    rt.barrier()
    return result
