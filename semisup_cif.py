"""Semi-supervised CIFAR-10 classification by iterative pseudo-labeling (2% of the labels).

The loop of semisup_cam.py: a ResNet-18 teacher learns from the labeled images and labels the rest;
a student learns from the pseudo-labels and from the labels (one after the other, or mixed in every
batch), or makes its own targets online (FixMatch); a student that validates better becomes the next
teacher. As in the fastest CIFAR-10 trainers, the uint8 data set lives on the device and batches are
indexed and augmented there.

    python semisup_cif.py                    # the thesis protocol; downloads CIFAR-10 if online
    python semisup_cif.py --demo             # a synthetic 10-class set, CPU, minutes
    python semisup_cif.py --pseudo_threshold=0.95 --student_schedule=joint --strong_aug=True
    python semisup_cif.py --student_schedule=fixmatch --pseudo_threshold=0.95 --joint_labeled_share=1/8

Every constant below can be overridden as --lower_case_name=value.
"""
import copy
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data import cifar
from data.cifar import load_cifar10, split_labeled
from data.synthetic import make_cifar_like
from data.transforms import cutout, photometric, rand_augment, translate_flip
from models.resnet_cifar import ResNet18
from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.config import Config, check_choice, check_loop, check_ranges
from utils.dist import Runtime, seed_everything, teardown
from utils.engine import (Batch, Best, Candidate, Step, batch_plan, cross_entropy, endless_batches, evaluate, fit,
                          predict_probs, slices)
from utils.errors import UserError
from utils.io import write_json
from utils.pseudo import MeanTeacher, confident_predictions, soft_targets
from utils.records import Run, iteration_table, start_run

# Data
DATA_ROOT = "data/cifar"  # holds cifar-10-batches-py/
DATA_ON_DEVICE = True  # the whole uint8 data set on the GPU; batches are indexed and augmented there
LABELED_FRACTION = 0.02  # 1000 labeled images, the rest unlabeled
BALANCED_SPLIT = False  # True: the same number of labeled images per class (the usual protocol)
VAL_SIZE = 5000  # images of the unlabeled part whose labels choose the best checkpoint (never trained on)
MAX_UNLABELED = 0  # cap on unlabeled images for quick runs (0 = all)
# Model and optimisation (the thesis recipe)
WIDTH = 64  # channels of ResNet-18's first stage; the demo uses a narrower network to run on a CPU
BATCH_SIZE = 128
EVAL_BATCH_SIZE = 1000
WEIGHT_DECAY = 5e-4
LR_MIN = 0.0
TEACHER_LR = 0.01
TEACHER_EPOCHS = 120
TEACHER_CHECKPOINT = ""  # start from this teacher (a teacher_best.pth.tar) instead of training one
EVAL_EACH = 5
# Pseudo-labeling loop
NO_ITER = 3
PSEUDO_EPOCHS = 60
PSEUDO_LR = 0.01
FINETUNE_EPOCHS = 150
FINETUNE_LR = 0.01
STUDENT_SCHEDULE = "staged"  # "staged": pseudo epochs, then fine-tune; "joint": mixed batches at FINETUNE_LR;
# "fixmatch": labeled and unlabeled images in every batch, the targets made online from weak views
JOINT_LABELED_SHARE = 0.5  # "joint", "fixmatch": share of each batch taken from the labeled set (FixMatch: 1/8)
UNLABELED_WEIGHT = 1.0  # "fixmatch": weight of the unlabeled loss (1 as published)
STUDENT_INIT = "fresh"  # "fresh": a new model each iteration (thesis); "teacher": the teacher's weights
PROMOTE_ALWAYS = False  # True: the thesis's behaviour, the student replaces the teacher even when worse
PSEUDO_THRESHOLD = 0.0  # unlabeled images whose teacher confidence is below are left out (online: the weak view's)
PSEUDO_SOFT = False  # True: the student matches the teacher's softmax on each crop, not its argmax
PSEUDO_EMA = 0.0  # > 0: a mean teacher of this momentum follows the student: PSEUDO_SOFT's teacher (with
# STUDENT_INIT="teacher"), or the one that gives "fixmatch" its targets
STRONG_AUG = False  # colour jitter, grayscale, blur and cutout on pseudo-labeled images
# Running
DEVICE = "auto"
PRECISION = "auto"  # "auto": bf16 autocast and channels-last where the device has bf16 arithmetic, else "fp32"
SEED = 0
COMPILE = False
SYNC_BN = False
SAVE_DIR = "saved_models/pseudo_cifar"
RUN_DIR = ""  # "" = runs/<date-time>_cif/, or the unfinished run of the same config
RESUME = True

# The demo: 300 of 3000 generated pictures keep their labels; the students take the options that did best on
# real CamVid, with a threshold and strong augmentation (RESULTS.md).
DEMO = dict(DATA_ROOT="data/demo_cifar", SAVE_DIR="saved_models/demo_cifar", LABELED_FRACTION=0.1,
            BALANCED_SPLIT=True, WIDTH=16, VAL_SIZE=200, MAX_UNLABELED=2000, BATCH_SIZE=64, EVAL_BATCH_SIZE=500,
            TEACHER_LR=0.05, TEACHER_EPOCHS=120, EVAL_EACH=10, NO_ITER=2, STUDENT_SCHEDULE="joint",
            STUDENT_INIT="teacher", PSEUDO_SOFT=True, PSEUDO_EMA=0.98, PSEUDO_THRESHOLD=0.7, STRONG_AUG=True,
            PSEUDO_EPOCHS=4, FINETUNE_LR=0.02)

Images = tuple[torch.Tensor, torch.Tensor]  # uint8 (N,3,32,32) images and their int64 labels


def check_config(cfg: Config) -> None:
    """Refuses, before the run directory records them, settings that would run but mean something else."""
    check_loop(cfg)
    check_choice(cfg, "student_schedule", ("staged", "joint", "fixmatch"))
    online = cfg.student_schedule == "fixmatch"
    if cfg.pseudo_ema > 0 and not online and not (cfg.pseudo_soft and cfg.student_init == "teacher"):
        raise UserError(f"--pseudo_ema={cfg.pseudo_ema} moves the teacher that gives PSEUDO_SOFT's targets towards a "
                        "student that started from it: set --pseudo_soft=True and --student_init=teacher (a fresh "
                        "student's weights cannot be averaged with the teacher's).")
    if online and (changed := [name for name in ("pseudo_soft", "strong_aug") if cfg[name]]):
        raise UserError(f"--student_schedule=fixmatch makes its targets online, with its own weak and strong views: "
                        f"--{changed[0]}=True acts on the teacher's pseudo-labels only. Leave it out.")
    if not online and cfg.unlabeled_weight != 1.0:
        raise UserError(f"--unlabeled_weight={cfg.unlabeled_weight} weighs FixMatch's unlabeled loss: use it with "
                        "--student_schedule=fixmatch.")
    check_ranges(cfg, {"val_size": (lambda v: v >= 1, "images that choose the best checkpoint, at least 1"),
                       "width": (lambda v: v >= 1, "channels of the first stage, e.g. 64")})


def make_demo_data(root: str) -> None:
    make_cifar_like(root, n_train=3000, n_test=500)


# ----------------------------------------------------------------------------- data

def load_data(cfg: Config, rt: Runtime, run: Run) -> tuple[Images, Images, Images, Images]:
    """Labeled, val, unlabeled (labels kept to measure the pseudo-labels) and test images. Model selection
    needs labels that training never sees: VAL_SIZE images of the unlabeled part."""
    data = load_cifar10(cfg.data_root, download=not cfg.demo)
    labeled, rest = split_labeled(data.train_labels, cfg.labeled_fraction, cfg.balanced_split, cfg.seed)
    shuffled = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(cfg.seed + 1))]
    val, unlabeled = shuffled[: cfg.val_size].sort().values, shuffled[cfg.val_size :].sort().values
    if cfg.max_unlabeled > 0:
        unlabeled = unlabeled[: cfg.max_unlabeled]
    if cfg.no_iter > 0 and len(unlabeled) == 0:  # found now, not after the teacher has trained
        raise UserError(f"No unlabeled images are left to learn from: {len(labeled)} labeled and {len(val)} val "
                        "images take all the train images. Lower --labeled_fraction or --val_size, or train the "
                        "teacher alone (--no_iter=0).")
    if rt.is_main:
        write_json(run.folder / "split.json", {"labeled": labeled.tolist(), "val": val.tolist(),
                                               "unlabeled": unlabeled.tolist()})
    device = rt.device if cfg.data_on_device else torch.device("cpu")
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    part = [(images[index.to(device)], labels[index.to(device)]) for index in (labeled, val, unlabeled)]
    return part[0], part[1], part[2], (data.test_images.to(device), data.test_labels.to(device))


def crops(data: Images, index: torch.Tensor, generator: torch.Generator, rt: Runtime) -> Batch:
    """The indexed images, padded by 4, randomly cropped back to 32x32 and flipped, with their labels."""
    images, labels = data
    index = index.to(images.device)
    return (translate_flip(images[index].to(rt.device, non_blocking=True), 4, generator),
            labels[index].to(rt.device, non_blocking=True))


def pseudo_crops(pseudo: Images, index: torch.Tensor, generator: torch.Generator, cfg: Config, rt: Runtime,
                 teacher: nn.Module | None) -> Batch:
    """Pseudo-labeled images and their targets: the pseudo-labels, or with PSEUDO_SOFT the teacher's softmax
    on these very crops; STRONG_AUG then changes colours, blurs and cuts out a square."""
    images, labels = crops(pseudo, index, generator, rt)
    if cfg.pseudo_soft:
        labels = soft_targets(labels, cifar.NUM_CLASSES, -100, rt, teacher, images)
    if cfg.strong_aug:
        images = cutout(photometric(images, generator), 16, generator, cifar.MEAN)
    return images, labels


def labeled_batches(labeled: Images, count: int, steps: int, generator: torch.Generator,
                    rt: Runtime) -> Iterator[Batch]:
    ids = endless_batches(len(labeled[0]), count, generator, rt)
    for _ in range(steps):
        yield crops(labeled, next(ids), generator, rt)


def pseudo_batches(pseudo: Images, count: int, steps: int, generator: torch.Generator, cfg: Config, rt: Runtime,
                   teacher: nn.Module | None) -> Iterator[Batch]:
    ids = endless_batches(len(pseudo[0]), count, generator, rt)
    for _ in range(steps):
        yield pseudo_crops(pseudo, next(ids), generator, cfg, rt, teacher)


def joint_batches(labeled: Images, pseudo: Images, counts: list[int], steps: int, generator: torch.Generator,
                  cfg: Config, rt: Runtime, teacher: nn.Module | None) -> Iterator[Batch]:
    """Every batch holds counts[0] labeled images, then counts[1] pseudo-labeled ones; with PSEUDO_SOFT the
    labels become one-hot distributions, to sit beside the teacher's softmax."""
    labeled_ids = endless_batches(len(labeled[0]), counts[0], generator, rt)
    pseudo_ids = endless_batches(len(pseudo[0]), counts[1], generator, rt)
    for _ in range(steps):
        images, labels = crops(labeled, next(labeled_ids), generator, rt)
        if cfg.pseudo_soft:
            labels = soft_targets(labels, cifar.NUM_CLASSES, -100, rt)
        pseudo_images, pseudo_targets = pseudo_crops(pseudo, next(pseudo_ids), generator, cfg, rt, teacher)
        yield torch.cat([images, pseudo_images]), torch.cat([labels, pseudo_targets])


def online_batches(labeled: Images, unlabeled: Images, counts: list[int], steps: int, generator: torch.Generator,
                   rt: Runtime) -> Iterator[dict]:
    """FixMatch's batches: counts[0] labeled images; counts[1] unlabeled ones, as a weak view (translate and flip)
    and a strong one (its own translation and flip, RandAugment's colour operations, cutout). Their labels are
    never read."""
    labeled_ids = endless_batches(len(labeled[0]), counts[0], generator, rt)
    unlabeled_ids = endless_batches(len(unlabeled[0]), counts[1], generator, rt)
    for _ in range(steps):
        images, labels = crops(labeled, next(labeled_ids), generator, rt)
        index = next(unlabeled_ids).to(unlabeled[0].device)
        chosen = unlabeled[0][index].to(rt.device, non_blocking=True)
        strong = rand_augment(translate_flip(chosen, 4, generator), generator)
        yield {"images": images, "labels": labels, "weak": translate_flip(chosen, 4, generator),
               "strong": cutout(strong, 16, generator, (127.0, 127.0, 127.0), inside=True)}  # FixMatch's grey


# ----------------------------------------------------------------------------- training steps

def fixmatch_step(cfg: Config, mean_teacher: MeanTeacher | None) -> Step:
    """FixMatch (Sohn et al. 2020, as kekmodel/FixMatch-pytorch trains it): one pass over the labeled, weak and
    strong images together; the weak views' predictions, detached, are the strong views' targets where their
    confidence reaches PSEUDO_THRESHOLD; the unlabeled loss is averaged over all unlabeled images. With PSEUDO_EMA
    the mean teacher makes the targets instead, in eval mode."""

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, count = batch["images"], len(batch["images"])
        if mean_teacher is None:
            logits_labeled, logits_weak, logits_strong = model(torch.cat([images, batch["weak"], batch["strong"]])
                                                               ).split([count, len(batch["weak"]),
                                                                        len(batch["strong"])])
            confidence, labels = logits_weak.detach().float().softmax(1).max(1)
        else:
            confidence, labels = confident_predictions(mean_teacher.model, batch["weak"])
            logits_labeled, logits_strong = model(torch.cat([images, batch["strong"]])).split(
                [count, len(batch["strong"])])
        kept = confidence >= cfg.pseudo_threshold
        loss_labeled = cross_entropy(logits_labeled, batch["labels"])
        loss_strong = (F.cross_entropy(logits_strong.float(), labels, reduction="none") * kept).mean()
        logs = {"loss_labeled": loss_labeled, "loss_strong": loss_strong, "above_threshold": kept.float().mean() * 100}
        return loss_labeled + cfg.unlabeled_weight * loss_strong, logs

    return step


# ----------------------------------------------------------------------------- models

def fresh_model(cfg: Config, rt: Runtime, salt: int) -> nn.Module:
    """Seeded per model, so a resumed run builds the same weights as the interrupted one."""
    seed_everything(cfg.seed * 1009 + salt)
    return rt.prepare(ResNet18(cifar.NUM_CLASSES, cifar.MEAN, cifar.STD, cfg.width), cfg.sync_bn)


def trained_model(candidate: Candidate, cfg: Config, rt: Runtime, run: Run) -> nn.Module:
    """The weights of a best checkpoint; one of this run's must not have been replaced by another run's."""
    checkpoint = load_checkpoint(candidate.path)
    if candidate.of_this_run:
        run.check_own(checkpoint, candidate.path)
    model = rt.prepare(ResNet18(cifar.NUM_CLASSES, cifar.MEAN, cifar.STD, cfg.width), cfg.sync_bn)
    load_weights(model, checkpoint, candidate.path)
    return model


def accuracy(model: nn.Module, data: Images, cfg: Config, rt: Runtime) -> float:
    return evaluate(model, slices(*data, cfg.eval_batch_size), cifar.NUM_CLASSES, rt).accuracy()


def train(model: nn.Module, phase: str, iteration: int, batches: Any, steps: int, epochs: int, lr: float,
          best: Best, val: Images, cfg: Config, rt: Runtime, run: Run, step: Step | None = None,
          mean_teacher: MeanTeacher | None = None, pseudo: Images | None = None) -> dict[str, Any]:
    """One phase with SGD (Nesterov momentum 0.9) and a cosine schedule to LR_MIN; `step` gives the loss
    (cross-entropy against the batch's targets by default). A mean teacher follows the model after every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    step = step or (lambda net, batch: (cross_entropy(net(batch[0]), batch[1]), {}))
    return fit(model, phase, iteration, batches, steps, epochs, step, optimizer, best,
               lambda m: validate(m, val, cfg, rt, pseudo, mean_teacher), run, rt,
               after_step=mean_teacher.update if mean_teacher else None,
               beside={"mean_teacher": mean_teacher.model} if mean_teacher else None)


def validate(model: nn.Module, val: Images, cfg: Config, rt: Runtime, pseudo: Images | None = None,
             mean_teacher: MeanTeacher | None = None) -> tuple[float, dict[str, Any]]:
    """Val accuracy; with `pseudo`, how often the model agrees with its pseudo-labels, as the thesis printed; and
    the mean teacher's accuracy."""
    score = accuracy(model, val, cfg, rt)
    details = {"val_acc": score}
    if pseudo is not None:
        details["pseudo_agreement"] = accuracy(model, (pseudo[0][:10000], pseudo[1][:10000]), cfg, rt)
    if mean_teacher is not None:
        details["mean_teacher_score"] = accuracy(mean_teacher.model, val, cfg, rt)
    return score, details


def test(model: nn.Module, test_set: Images, title: str, cfg: Config, rt: Runtime) -> dict[str, Any]:
    score = accuracy(model, test_set, cfg, rt)
    if rt.is_main:
        tqdm.write(f"Test accuracy, {title}: {score:.2f}%")
    return {"test_acc": score}


# ----------------------------------------------------------------------------- pseudo-labels

def pseudo_label(teacher_model: nn.Module, teacher: Candidate, iteration: int, unlabeled: Images, cfg: Config,
                 rt: Runtime, run: Run) -> tuple[Images, dict[str, Any]]:
    """The teacher's label and confidence for every unlabeled image, kept in the run directory; returns the
    images at or above PSEUDO_THRESHOLD with their pseudo-labels, and how good the labels are."""
    path = run.folder / f"pseudo_it{iteration}.pth.tar"
    identity = {"teacher": str(teacher.path), "teacher_val": teacher.val}
    stored = load_checkpoint(path) if path.is_file() else None
    if stored is None or stored["identity"] != identity:
        images = unlabeled[0]
        probs = torch.cat([predict_probs(teacher_model, images[i : i + cfg.eval_batch_size], rt)
                           for i in range(0, len(images), cfg.eval_batch_size)])
        confidence, labels = probs.max(1)
        stored = {"labels": labels.cpu(), "confidence": confidence.cpu(), "identity": identity}
        if rt.is_main:
            save_checkpoint(path, **stored)
    labels, keep = stored["labels"], stored["confidence"] >= cfg.pseudo_threshold
    images, truth = unlabeled
    kept = keep.to(images.device)
    correct = (labels[keep] == truth.cpu()[keep]).float()
    return (images[kept], labels.to(images.device)[kept]), {
        "pseudo_acc": float(correct.mean() * 100) if len(correct) else None,
        "pseudo_all_acc": float((labels == truth.cpu()).float().mean() * 100),
        "pseudo_kept_frac": float(keep.float().mean() * 100)}


# ----------------------------------------------------------------------------- the experiment

def main(argv: list[str]) -> None:
    cfg, rt, run = start_run(globals(), argv, DEMO, "cif", check_config, make_demo_data)
    run.summary["data"] = "CIFAR-10"  # what the report calls the run's data
    labeled, val, unlabeled, test_set = load_data(cfg, rt, run)
    save_dir = Path(cfg.save_dir)

    # The teacher learns from the labeled images, or is given (TEACHER_CHECKPOINT) to compare students on it.
    given = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
    if run.summary["teacher"]:  # trained and tested by an earlier process of this run
        teacher = Candidate("teacher", given or save_dir / "teacher_best.pth.tar", run.summary["teacher"]["val_acc"],
                            of_this_run=given is None)
    else:
        with run.timed("teacher"):
            if given:
                teacher = Candidate("teacher", given, math.nan, of_this_run=False)
                teacher.val = accuracy(trained_model(teacher, cfg, rt, run), val, cfg, rt)
                best_epoch = load_checkpoint(given).get("epoch")
            else:
                best = Best(save_dir / "teacher_best.pth.tar", "val_acc")
                (count,), steps = batch_plan([len(labeled[0])], cfg.batch_size, rt)
                result = train(fresh_model(cfg, rt, 0), "teacher", 0,
                               lambda generator: labeled_batches(labeled, count, steps, generator, rt),
                               steps, cfg.teacher_epochs, cfg.teacher_lr, best, val, cfg, rt, run)
                teacher, best_epoch = Candidate("teacher", best.path, best.score), result["best_epoch"]
            run.summary["teacher"] = {"val_acc": teacher.val, "best_epoch": best_epoch,
                                      **test(trained_model(teacher, cfg, rt, run), test_set, "teacher", cfg, rt)}

    for iteration in range(1, cfg.no_iter + 1):
        recorded = {entry["iteration"]: entry for entry in run.summary["iterations"]}
        if iteration in recorded:  # done by an earlier process of this run
            if recorded[iteration]["promoted"]:
                teacher = Candidate(f"student_it{iteration}", save_dir / f"student_it{iteration}_best.pth.tar",
                                    recorded[iteration]["val_acc"])
            continue
        online = cfg.student_schedule == "fixmatch"
        # 1. The teacher labels the unlabeled images (an online student makes its own targets instead).
        if not online:
            with run.timed(f"it{iteration}_pseudo_label"):
                teacher_model = trained_model(teacher, cfg, rt, run)
                pseudo, quality = pseudo_label(teacher_model, teacher, iteration, unlabeled, cfg, rt, run)
        # 2. A student learns from the pseudo-labels and the labels, or (online) from the labels and its own targets.
        # With PSEUDO_SOFT the teacher stays to give every pseudo-labeled image its softmax; a mean teacher
        # (PSEUDO_EMA) follows the student after every step.
        with run.timed(f"it{iteration}_student"):
            model = fresh_model(cfg, rt, iteration) if cfg.student_init == "fresh" else \
                trained_model(teacher, cfg, rt, run)
            best = Best(save_dir / f"student_it{iteration}_best.pth.tar", "val_acc")
            soft_teacher = teacher_model if cfg.pseudo_soft else None
            # A mean teacher starts from the student's own weights: an offline student's, from its teacher.
            mean_teacher = None if cfg.pseudo_ema == 0 else \
                MeanTeacher(copy.deepcopy(model) if online else teacher_model, model, cfg.pseudo_ema)
            if online:  # FixMatch: labeled and unlabeled images in every batch, one phase
                shares = [cfg.joint_labeled_share, 1 - cfg.joint_labeled_share]
                counts, steps = batch_plan([len(labeled[0]), len(unlabeled[0])], cfg.batch_size, rt, shares)
                train(model, f"it{iteration}_fixmatch", iteration,
                      lambda generator: online_batches(labeled, unlabeled, counts, steps, generator, rt),
                      steps, cfg.pseudo_epochs, cfg.finetune_lr, best, val, cfg, rt, run,
                      fixmatch_step(cfg, mean_teacher), mean_teacher)
            elif cfg.student_schedule == "joint":  # one phase of mixed batches, at the rate the labels are learned at
                shares = [cfg.joint_labeled_share, 1 - cfg.joint_labeled_share]
                counts, steps = batch_plan([len(labeled[0]), len(pseudo[0])], cfg.batch_size, rt, shares)
                train(model, f"it{iteration}_joint", iteration,
                      lambda generator: joint_batches(labeled, pseudo, counts, steps, generator, cfg, rt, soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.finetune_lr, best, val, cfg, rt, run,
                      mean_teacher=mean_teacher, pseudo=pseudo)
            else:  # the thesis: the pseudo-labels first, then fine-tuning on the labels
                (count,), steps = batch_plan([len(pseudo[0])], cfg.batch_size, rt)
                train(model, f"it{iteration}_pseudo", iteration,
                      lambda generator: pseudo_batches(pseudo, count, steps, generator, cfg, rt, soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.pseudo_lr, best, val, cfg, rt, run,
                      mean_teacher=mean_teacher, pseudo=pseudo)
                (count,), steps = batch_plan([len(labeled[0])], cfg.batch_size, rt)
                train(model, f"it{iteration}_finetune", iteration,
                      lambda generator: labeled_batches(labeled, count, steps, generator, rt),
                      steps, cfg.finetune_epochs, cfg.finetune_lr, best, val, cfg, rt, run)
            # 3. The student is tested, and teaches the next iteration if it validates better (PROMOTE_ALWAYS:
            # always, as in the thesis).
            student = Candidate(f"student_it{iteration}", best.path, best.score)
            promoted = cfg.promote_always or student.val > teacher.val
            student_model = trained_model(student, cfg, rt, run)
            if online:  # no pseudo-labels: how often the student itself is right on the unlabeled images
                quality = {"pseudo_acc": None, "pseudo_all_acc": accuracy(student_model, unlabeled, cfg, rt),
                           "pseudo_kept_frac": None}
            entry = {"iteration": iteration, "val_acc": student.val,
                     **test(student_model, test_set, f"student, iteration {iteration}", cfg, rt),
                     "promoted": promoted, "teacher": teacher.name, **quality}
        teacher = student if promoted else teacher
        run.summary["iterations"].append(entry)
        run.summary["current_teacher"] = str(teacher.path)
        run.save_summary()
        if rt.is_main:
            tqdm.write(iteration_table(run.summary, "acc"))
    run.finish(rt.is_main)
    teardown()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("Stopped by Ctrl-C. The same command resumes the run.")
