"""Training and evaluation mechanics shared by both experiments: the loss, shuffled batches, an epoch, a phase
with resume and best checkpoint (`fit`), evaluation and batched prediction. What a phase trains on (its batches,
targets and loss: the training step) is written in the entry scripts and passed in."""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

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
# A training step: the loss of one batch for the model, and named numbers to average over the epoch and record
# (the terms of the loss, say). It runs under autocast; fit does the backward pass and the optimizer step.
Step = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


class TrainingDiverged(UserError):
    pass


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean over the pixels (or samples) that are not ignored; 0, not PyTorch's NaN, when a batch is all
    ignored, which a high pseudo-label threshold makes likely. `target` holds class indices, or class
    distributions shaped like `logits` (PSEUDO_SOFT), where an all-zero distribution is the ignored pixel."""
    if target.is_floating_point():
        total = F.cross_entropy(logits.float(), target, reduction="sum")
        return total / target.sum().clamp(min=1)
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return total / (target != ignore_index).sum().clamp(min=1)


def endless_batches(n: int, batch_size: int, generator: torch.Generator, rt: Runtime) -> Iterator[torch.Tensor]:
    """This process's share (about batch_size / world indices) of one batch after another, a new shuffle
    at the end of each pass, so a small set can be cycled beside a large one. The last incomplete batch
    is dropped (BatchNorm dislikes tiny batches); a set smaller than one batch gives one batch of all of it."""
    batch_size = min(batch_size, n)
    steps = n // batch_size
    while True:
        order = torch.randperm(n, generator=generator)
        yield from order[: steps * batch_size].view(steps, batch_size)[:, rt.rank :: rt.world]


def batch_split(batch_size: int, shares: Sequence[float]) -> list[int]:
    """Crops per set in one batch: `shares` of `batch_size`, rounded, at least one from each set."""
    counts: list[int] = []
    for share in shares[:-1]:
        later = len(shares) - len(counts) - 1  # sets still to come, a crop kept for each
        counts.append(min(max(1, round(batch_size * share)), batch_size - sum(counts) - later))
    return counts + [max(1, batch_size - sum(counts))]


def batch_plan(sizes: Sequence[int], batch_size: int, rt: Runtime,
               shares: Sequence[float] = (1.0,)) -> tuple[list[int], int]:
    """Crops of each set per batch, and the steps of an epoch: one pass over the set that takes the
    most batches (the smaller set is cycled, as in ST++'s and Naive-Student's joint batches)."""
    if any(size == 0 for size in sizes):
        raise UserError("A training set of this phase is empty: check the labeled split and the unlabeled images.")
    counts = batch_split(batch_size, shares)
    if min(counts) < rt.world:
        raise UserError(f"A batch of {batch_size} ({' + '.join(map(str, counts))} crops from the phase's sets) cannot "
                        f"give each of the {rt.world} processes a crop of every set: raise --batch_size (the batch "
                        "of all processes together) or, in the joint schedule, move --joint_labeled_share towards 0.5.")
    return counts, max(size // min(count, size) for size, count in zip(sizes, counts))


def train_one_epoch(model: nn.Module, batches: Iterable[Any], steps: int, step: Step,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, rt: Runtime,
                    desc: str = "train", after_step: Callable[[], None] | None = None) -> dict[str, float]:
    """One pass over `batches`; returns the mean loss and the means of what `step` logs (one device sync per
    epoch, plus the bar's)."""
    model.train()
    totals = {"loss": torch.zeros((), device=rt.device)}
    bar = tqdm(batches, total=steps, desc=desc, leave=False, disable=not rt.is_main, dynamic_ncols=True)
    for index, batch in enumerate(bar):
        with rt.autocast():
            loss, logs = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        for name, value in {"loss": loss, **logs}.items():
            totals[name] = totals[name] + value.detach() if name in totals else value.detach().float()
        if index % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    sums = torch.stack(list(totals.values()))
    if rt.distributed:
        torch.distributed.all_reduce(sums)
        sums /= rt.world
    return {name: total / max(steps, 1) for name, total in zip(totals, sums.tolist())}


@torch.inference_mode()
def predict_probs(model: nn.Module, images: torch.Tensor, rt: Runtime, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax of one batch, averaged over `scales` and, with `flip`, horizontal mirroring; segmentation
    logits are resized back to the input size first, classification logits (B,C) are taken as they are."""
    model.eval()
    images = images.to(rt.device, non_blocking=True)
    size = images.shape[-2:]
    total = None
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
    return total / (len(scales) * (2 if flip else 1))


def slices(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of a set held as two tensors, for `evaluate`."""
    return ((images[start : start + batch_size], labels[start : start + batch_size])
            for start in range(0, len(images), batch_size))


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch], num_classes: int, rt: Runtime) -> ConfusionMatrix:
    """Confusion matrix of `model` over `batches` of images and labels, each process taking every world-th batch."""
    model.eval()
    cm = ConfusionMatrix(num_classes, rt.device)
    all_finite = torch.ones((), dtype=torch.bool, device=rt.device)  # checked once at the end: no sync per batch
    for k, (images, labels) in enumerate(tqdm(batches, desc="eval", leave=False, disable=not rt.is_main,
                                              dynamic_ncols=True)):
        if k % rt.world != rt.rank:
            continue
        with rt.autocast():
            logits = model(images.to(rt.device, non_blocking=True))
        all_finite &= logits.isfinite().all()
        cm.update(labels.to(rt.device, non_blocking=True), logits.argmax(1))
    if not all_finite:
        raise TrainingDiverged("The model's logits are NaN or infinite: its weights have diverged.")
    cm.reduce()
    return cm


@dataclass
class Best:
    """Where the best checkpoint of a model goes and which score it has to beat."""

    path: Path
    metric: str  # the thesis's field name: val_iou or val_acc
    score: float = -math.inf
    epoch: int = 0


@dataclass
class Candidate:
    """A trained model known by its best checkpoint and that checkpoint's validation score."""

    name: str
    path: Path
    val: float
    of_this_run: bool = True  # False for TEACHER_CHECKPOINT, which another run wrote


def _resume_state(path: Path, beside: Mapping[str, nn.Module], phase: str, run: Run) -> dict[str, Any] | None:
    """The phase's resume checkpoint; None when there is none, or when it cannot be used (then the phase
    starts over, which only costs the time it had trained)."""
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except UserError as error:
        run.note(f"{error} The phase {phase} starts over.")
        return None
    needed = ["state_dict", "optimizer", "scheduler", "rng", "epoch", "seconds", "loss", "best_score", "best_epoch"]
    missing = [field for field in [*needed, *beside] if field not in state]
    if missing:
        run.note(f"{path} lacks {', '.join(missing)} to resume from: the phase {phase} starts over.")
        return None
    return state


def _diverged(phase: str, epoch: int, what: str, last_path: Path) -> TrainingDiverged:
    kept = (f"The last good state is kept in {last_path}; a re-run resumes from it" if last_path.is_file()
            else "Nothing of this phase was saved")
    return TrainingDiverged(f"Training diverged in phase {phase}, epoch {epoch}: {what}. {kept}. Lower the learning "
                            "rate (a changed config needs --resume=False or another --run_dir) and run again.")


# The resume checkpoint holds the optimizer state (141 MB for SwiftNet-RN18 with Adam), too slow to save after
# every short epoch: between evaluations it is saved once this many seconds have passed, the most a kill can cost.
RESUME_SAVE_EVERY_S = 60.0


def fit(model: nn.Module, phase: str, iteration: int, batches: Callable[[torch.Generator], Iterator[Any]],
        steps: int, epochs: int, step: Step, optimizer: torch.optim.Optimizer, best: Best,
        validate: Callable[[nn.Module], tuple[float, dict[str, Any]]], run: Run, rt: Runtime, *,
        after_step: Callable[[], None] | None = None, beside: Mapping[str, nn.Module] | None = None) -> dict[str, Any]:
    """Trains `model` through one phase of `epochs` epochs of `steps` batches, with a cosine schedule from the
    optimizer's rate to the run's LR_MIN; resumes the phase if it was interrupted, skips it if done.

    `batches(generator)` yields an epoch; the generator's state is kept in the resume checkpoint so a resumed phase
    draws the same crops. `step` gives each batch's loss; `after_step` runs after every optimizer step. Models a
    method keeps `beside` the trained one (a mean teacher) are saved and resumed with it. Every EVAL_EACH epochs
    `validate` scores the model, and the best score's weights go to `best.path`. Returns the phase's record, with
    the final weights in `model`."""
    beside = beside or {}
    last_path = run.folder / f"last_{phase}.pth.tar"
    finished = run.progress.get(phase)
    if finished is not None:
        try:
            load_weights(model, load_checkpoint(last_path), last_path)
            best.score, best.epoch = finished["best_score"], finished["best_epoch"]
            return finished
        except UserError as error:  # the final weights are lost; training the phase again makes them anew
            run.note(f"{error} The finished phase {phase} is trained again to rebuild them.")
            run.mark_done(phase, None)

    seed, eval_each = run.config["seed"], run.config["eval_each"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps),
                                                           eta_min=run.config["lr_min"])
    generator = torch.Generator().manual_seed(seed * 1009 + zlib.crc32(phase.encode()))
    start_epoch, seconds, loss = 0, 0.0, math.nan
    state = _resume_state(last_path, beside, phase, run)
    if state is not None:
        load_weights(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        start_epoch, seconds, loss = state["epoch"], state["seconds"], state["loss"]
        best.score, best.epoch = state["best_score"], state["best_epoch"]
        for name, kept in beside.items():
            kept.load_state_dict(state[name])
    run.forget_epochs_after(phase, start_epoch)  # epochs logged after the resume checkpoint are trained again

    def save_last(epoch: int, **fields: Any) -> None:
        """The phase's checkpoint keeps, beside the model, the models the method keeps beside it."""
        save_checkpoint(last_path, phase=phase, iteration=iteration, epoch=epoch, state_dict=model.state_dict(),
                        **fields, config=dict(run.config), run_id=run.id, **run.carried,
                        **{name: kept.state_dict() for name, kept in beside.items()})

    train_model = rt.wrap(model)
    if run.config.get("compile"):
        train_model = torch.compile(train_model)
    bar = tqdm(range(start_epoch + 1, epochs + 1), desc=phase, initial=start_epoch, total=epochs,
               disable=not rt.is_main, dynamic_ncols=True)
    last_saved = time.monotonic()
    for epoch in bar:
        began = time.perf_counter()
        means = train_one_epoch(train_model, batches(generator), steps, step, optimizer, scheduler, rt,
                                desc=f"epoch {epoch}", after_step=after_step)
        loss = means.pop("loss")
        weights = [t for t in model.state_dict().values() if t.is_floating_point()]  # BatchNorm statistics too
        if not math.isfinite(loss) or not torch.stack([t.isfinite().all() for t in weights]).all():
            raise _diverged(phase, epoch, f"its loss became {loss}" if not math.isfinite(loss) else
                            "its weights became NaN or infinite", last_path)
        seconds += time.perf_counter() - began
        entry = {"phase": phase, "iteration": iteration, "epoch": epoch, "step": epoch * steps, "loss": loss,
                 **means, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3)}
        rt.sync_buffers(model)
        for kept in beside.values():  # a mean teacher averaged each process's own statistics into its buffers
            rt.sync_buffers(kept)
        evaluated = epoch % eval_each == 0 or epoch == epochs
        if evaluated:
            try:
                score, details = validate(model)
            except TrainingDiverged:  # evaluate's, which cannot name the phase
                raise _diverged(phase, epoch, "its logits on the validation images became NaN or infinite",
                                last_path) from None
            entry.update(score=score, **details)
            if score > best.score:
                best.score, best.epoch = score, epoch
                if rt.is_main:
                    save_checkpoint(best.path, iteration=iteration, epoch=epoch, phase=phase,
                                    state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                                    **{best.metric: score}, config=dict(run.config), run_id=run.id, **run.carried)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.2f}", best=f"{best.score:.2f}")
        run.log(**entry)
        if rt.is_main and (evaluated or time.monotonic() - last_saved >= RESUME_SAVE_EVERY_S):
            last_saved = time.monotonic()
            rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            save_last(epoch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng, loss=loss,
                      seconds=seconds, best_score=best.score, best_epoch=best.epoch)
        rt.barrier()
    result = {"best_score": best.score, "best_epoch": best.epoch, "epochs": epochs, "loss": loss,
              "seconds": round(seconds, 3)}
    # Marked done first: a kill before the slimming below leaves a full checkpoint of the same weights.
    run.mark_done(phase, result)
    if rt.is_main:
        # The optimizer state is only needed to resume inside the phase: keep the final weights alone
        # (and those of the models kept beside, which one may want to evaluate).
        save_last(epochs, result=result)
    rt.barrier()
    return result
