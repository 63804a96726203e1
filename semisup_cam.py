"""Semi-supervised semantic segmentation of CamVid by iterative pseudo-labeling.

A SwiftNet-RN18 teacher learns from the labeled images and labels the unlabeled frames; a student
learns from those pseudo-labels and from the labels (one after the other, as in the thesis, or
mixed in every batch); a student that validates better than its teacher becomes the next teacher.

    python semisup_cam.py                          # the thesis protocol on data/camvid
    python semisup_cam.py --demo                   # generated street scenes, CPU, minutes
    python semisup_cam.py --labeled_fraction=1/8 --pseudo_threshold=0.9
    torchrun --nproc_per_node=4 semisup_cam.py     # several GPUs

Every constant below can be overridden as --lower_case_name=value.
"""
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm import tqdm

from data import camvid
from data.camvid import SegmentationSet, load_labels, load_split, load_unlabeled, read_split_file, split_names
from data.synthetic import make_street_scenes
from data.transforms import cutmix, photometric, scale_crop_flip
from models.swiftnet import convert_reference_state_dict, swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_fitting, load_weights
from utils.config import Config, check_choice, check_loop, check_ranges
from utils.dist import Runtime, seed_everything, teardown
from utils.engine import (Batch, Best, Candidate, batch_plan, cross_entropy, endless_batches, evaluate, fit,
                          predict_probs)
from utils.errors import UserError
from utils.io import write_json
from utils.pictures import prediction_pictures, pseudo_label_pictures
from utils.pseudo import MeanTeacher, label_frames, pseudo_folder, pseudo_quality, soft_targets
from utils.records import Run, iteration_table, start_run

# Data
DATA_ROOT = "data/camvid"  # thesis layout: train/, train_labels/, val/, ..., unlabeled/train/
IMAGE_SCALE = 1.0  # resize images (bilinear) and labels (nearest) at load time; 0.5 for CPU runs
DATA_ON_DEVICE = True  # keep the decoded dataset on the GPU (uint8), so batches never wait for the host
LABELED_FRACTION = 1.0  # < 1: split protocol, that share of train keeps its labels, the rest is unlabeled
SPLIT_BY_SEQUENCE = False  # split protocol: labeled images from every sequence in proportion (name before "_")
SPLIT_FILE = ""  # reuse a split (the split.json of an earlier run)
MAX_UNLABELED = 0  # cap on unlabeled images for quick runs (0 = all)
PSEUDO_ROOT = ""  # where train_pseudoIt{i}/ go ("" = DATA_ROOT/unlabeled, as in the thesis)
# Model and optimisation (the thesis teacher recipe)
PRETRAINED = True  # ImageNet-initialised encoder (torchvision weights)
PRETRAINED_PATH = ""  # with PRETRAINED: a local ResNet-18 state dict instead of the download (no internet)
INIT_CHECKPOINT = ""  # start new models from this SwiftNet (ours or the reference's, any class count), not ImageNet
NORMALIZATION = "camvid"  # image statistics: "camvid" (measured on train) or "thesis" (its values, to reproduce it)
BATCH_SIZE = 12
EVAL_BATCH_SIZE = 8
CROP_SIZE = 448
WEIGHT_DECAY = 1e-4
LR_MIN = 1e-5
TEACHER_LR = 4e-3
TEACHER_EPOCHS = 400
TEACHER_CHECKPOINT = ""  # start from this teacher (a teacher_best.pth.tar) instead of training one
EVAL_EACH = 10  # validate every EVAL_EACH epochs, keep the best
# Pseudo-labeling loop (thesis defaults; the options after STUDENT_SCHEDULE are off)
NO_ITER = 3
PSEUDO_EPOCHS = 100
PSEUDO_LR = 1e-4
FINETUNE_EPOCHS = 200
FINETUNE_LR = 1e-4
STUDENT_SCHEDULE = "staged"  # "staged": pseudo epochs, then fine-tune; "joint": mixed batches at FINETUNE_LR
JOINT_LABELED_SHARE = 0.5  # "joint": share of each batch taken from the labeled set, the rest pseudo-labeled
STUDENT_INIT = "fresh"  # "fresh": a new model each iteration (thesis); "teacher": the teacher's weights
PROMOTE_ALWAYS = False  # True: the thesis's behaviour, the student replaces the teacher even when worse
PSEUDO_THRESHOLD = 0.0  # pixels whose teacher confidence is below become ignore
PSEUDO_IMAGE_SHARE = 1.0  # < 1: the student learns only from this share of the frames, the most reliable (ST++)
PSEUDO_TTA = False  # pseudo-labels from softmax averaged over flips and TTA_SCALES
PSEUDO_SOFT = False  # True: the student matches the teacher's softmax on each crop, not its argmax
PSEUDO_EMA = 0.0  # > 0: PSEUDO_SOFT's teacher follows the student (STUDENT_INIT="teacher") with this momentum
TTA_SCALES = [0.75, 1.0, 1.25]
STRONG_AUG = False  # colour jitter, grayscale, blur and CutMix on pseudo-labeled crops
# Running
PICTURES = 4  # val images (and pseudo-labeled frames) drawn after each model, in RUN_DIR/pictures/
DEVICE = "auto"
SEED = 0
COMPILE = False  # torch.compile the training model (CUDA)
SYNC_BN = False  # synchronised BatchNorm under torchrun
SAVE_DIR = "saved_models/pseudo_cam"
RUN_DIR = ""  # "" = runs/<date-time>_cam/, or the unfinished run of the same config
RESUME = True

# The demo: 16 of 160 generated scenes keep their labels; the students take the options that did best on
# real CamVid (RESULTS.md).
DEMO = dict(DATA_ROOT="data/demo_camvid", SAVE_DIR="saved_models/demo_cam", PRETRAINED=False, LABELED_FRACTION=0.1,
            BATCH_SIZE=8, CROP_SIZE=88, TEACHER_EPOCHS=120, EVAL_EACH=10, NO_ITER=2, STUDENT_SCHEDULE="joint",
            STUDENT_INIT="teacher", PSEUDO_SOFT=True, PSEUDO_EMA=0.98, PSEUDO_EPOCHS=5, FINETUNE_LR=1e-3)


def check_config(cfg: Config) -> None:
    """Refuses, before the run directory records them, settings that would run but mean something else."""
    check_loop(cfg)
    check_choice(cfg, "normalization", tuple(camvid.STATISTICS))
    check_ranges(cfg, {
        "image_scale": (lambda v: 0 < v < math.inf, "a positive factor, e.g. 0.5 for half size"),
        "crop_size": (lambda v: v >= 1, "the side of the square training crops in pixels, e.g. 448"),
        "tta_scales": (lambda v: len(v) > 0 and all(0 < s < math.inf for s in v),
                       "one or more positive scales, e.g. 0.75,1.0,1.25"),
        "pseudo_image_share": (lambda v: 0 < v <= 1, "the share of the pseudo-labeled frames the student learns "
                                                     "from, above 0 and at most 1 (1 = all of them)"),
        "pictures": (lambda v: v >= 0, "how many images to draw after each model, 0 for none"),
    })
    if cfg.pretrained_path and not cfg.pretrained:
        raise UserError(f"--pretrained_path={cfg.pretrained_path} holds ImageNet weights, but --pretrained=False "
                        "trains from scratch: set --pretrained=True to start from the file, or leave out "
                        "--pretrained_path.")
    if cfg.init_checkpoint:
        if not Path(cfg.init_checkpoint).is_file():
            raise UserError(f"--init_checkpoint={cfg.init_checkpoint} does not exist: give a SwiftNet checkpoint "
                            "(one of ours, or a state dict of the reference code).")
        if cfg.pretrained_path:
            raise UserError(f"--init_checkpoint={cfg.init_checkpoint} replaces the ImageNet weights of "
                            f"--pretrained_path={cfg.pretrained_path}: leave one of them out.")


def make_demo_data(root: str) -> None:
    make_street_scenes(root, counts={"train": 160, "val": 16, "test": 32}, unlabeled=0, size=(128, 96))


# ----------------------------------------------------------------------------- data

def load_data(cfg: Config, rt: Runtime, run: Run) -> tuple[SegmentationSet, SegmentationSet | None,
                                                             SegmentationSet, SegmentationSet]:
    """Labeled, unlabeled, val and test images. The unlabeled ones are the frames folder, or in the
    split protocol (LABELED_FRACTION < 1) the train images whose labels are hidden (kept to measure
    the pseudo-labels)."""
    root = Path(cfg.data_root)
    train = load_split(root, "train", cfg.image_scale)
    val, test = load_split(root, "val", cfg.image_scale), load_split(root, "test", cfg.image_scale)
    if cfg.labeled_fraction >= 1 and not cfg.split_file:
        labeled = train
        unlabeled = (None if cfg.no_iter == 0 else
                     load_unlabeled(root / "unlabeled" / "train", cfg.image_scale, cfg.max_unlabeled))
    else:
        if cfg.split_file:
            labeled_names, unlabeled_names = read_split_file(cfg.split_file, train.names)
        else:
            labeled_names, unlabeled_names = split_names(train.names, cfg.labeled_fraction, cfg.seed,
                                                         cfg.split_by_sequence)
        if cfg.max_unlabeled > 0:
            unlabeled_names = unlabeled_names[: cfg.max_unlabeled]
        if rt.is_main:
            write_json(run.folder / "split.json", {"labeled": labeled_names, "unlabeled": unlabeled_names})
        position = {name: i for i, name in enumerate(train.names)}
        labeled = train.subset([position[name] for name in labeled_names])
        unlabeled = train.subset([position[name] for name in unlabeled_names])
    sets = [labeled, unlabeled, val, test]
    if rt.device.type == "cuda":  # on the GPU, or in pinned memory for asynchronous copies
        sets = [s if s is None else s.to(rt.device) if cfg.data_on_device else s.pin_memory() for s in sets]
    return sets[0], sets[1], sets[2], sets[3]


def pseudo_root(cfg: Config) -> Path:
    return Path(cfg.pseudo_root or Path(cfg.data_root) / "unlabeled")


def crops(data: SegmentationSet, index: torch.Tensor, generator: torch.Generator, cfg: Config, rt: Runtime) -> Batch:
    """The indexed images and labels, randomly scaled (0.5-2x), cropped and flipped on the device."""
    images = data.images[index.to(data.images.device)].to(rt.device, non_blocking=True)
    labels = data.labels[index.to(data.labels.device)].to(rt.device, non_blocking=True)
    mean = camvid.STATISTICS[cfg.normalization][0]  # padding beyond the image: the mean colour, and Void
    return scale_crop_flip(images, labels, cfg.crop_size, mean, camvid.IGNORE_INDEX, generator)


def pseudo_crops(pseudo: SegmentationSet, index: torch.Tensor, generator: torch.Generator, cfg: Config,
                 rt: Runtime, teacher: nn.Module | None) -> Batch:
    """Crops of pseudo-labeled frames and their targets: the stored pseudo-labels, or with PSEUDO_SOFT the
    teacher's softmax on these very crops (Void where the threshold left pixels out). STRONG_AUG then
    changes colours, blurs and pastes boxes of other crops with their targets (CutMix)."""
    images, labels = crops(pseudo, index, generator, cfg, rt)
    if cfg.pseudo_soft:
        labels = soft_targets(labels, camvid.NUM_CLASSES, camvid.IGNORE_INDEX, rt, teacher, images)
    if cfg.strong_aug:
        images, labels = cutmix(photometric(images, generator), labels, generator)
    return images, labels


def labeled_batches(labeled: SegmentationSet, count: int, steps: int, generator: torch.Generator, cfg: Config,
                    rt: Runtime) -> Iterator[Batch]:
    """The teacher's and the fine-tuning's batches: labeled crops with their labels."""
    ids = endless_batches(len(labeled), count, generator, rt)
    for _ in range(steps):
        yield crops(labeled, next(ids), generator, cfg, rt)


def pseudo_batches(pseudo: SegmentationSet, count: int, steps: int, generator: torch.Generator, cfg: Config,
                   rt: Runtime, teacher: nn.Module | None) -> Iterator[Batch]:
    """The thesis student's first phase: pseudo-labeled crops only."""
    ids = endless_batches(len(pseudo), count, generator, rt)
    for _ in range(steps):
        yield pseudo_crops(pseudo, next(ids), generator, cfg, rt, teacher)


def joint_batches(labeled: SegmentationSet, pseudo: SegmentationSet, counts: list[int], steps: int,
                  generator: torch.Generator, cfg: Config, rt: Runtime, teacher: nn.Module | None) -> Iterator[Batch]:
    """Every batch holds counts[0] labeled crops, then counts[1] pseudo-labeled ones (ST++, Naive-Student);
    with PSEUDO_SOFT the labels become one-hot distributions, to sit beside the teacher's softmax."""
    labeled_ids = endless_batches(len(labeled), counts[0], generator, rt)
    pseudo_ids = endless_batches(len(pseudo), counts[1], generator, rt)
    for _ in range(steps):
        images, labels = crops(labeled, next(labeled_ids), generator, cfg, rt)
        if cfg.pseudo_soft:
            labels = soft_targets(labels, camvid.NUM_CLASSES, camvid.IGNORE_INDEX, rt)
        pseudo_images, pseudo_targets = pseudo_crops(pseudo, next(pseudo_ids), generator, cfg, rt, teacher)
        yield torch.cat([images, pseudo_images]), torch.cat([labels, pseudo_targets])


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the pixels that are not Void; against distributions where targets are soft."""
    return cross_entropy(logits, target, camvid.IGNORE_INDEX)


# ----------------------------------------------------------------------------- models

def build(cfg: Config, pretrained: bool = False) -> nn.Module:
    return swiftnet_rn18(camvid.NUM_CLASSES, *camvid.STATISTICS[cfg.normalization], pretrained, cfg.pretrained_path)


def fresh_model(cfg: Config, rt: Runtime, salt: int) -> nn.Module:
    """A model to train from its initialisation: INIT_CHECKPOINT, else ImageNet (PRETRAINED) or scratch.
    Seeded per model, so a resumed run builds the same weights as the interrupted one."""
    seed_everything(cfg.seed * 1009 + salt)
    model = build(cfg, pretrained=cfg.pretrained and not cfg.init_checkpoint)
    if cfg.init_checkpoint:
        checkpoint = load_checkpoint(cfg.init_checkpoint)
        report = load_fitting(model, convert_reference_state_dict(checkpoint.get("state_dict", checkpoint)),
                              cfg.init_checkpoint)
        if rt.is_main:
            tqdm.write(report)
    return rt.prepare(model, cfg.sync_bn)


def trained_model(candidate: Candidate, cfg: Config, rt: Runtime, run: Run) -> nn.Module:
    """The weights of a best checkpoint; one of this run's must not have been replaced by another run's."""
    checkpoint = load_checkpoint(candidate.path)
    if candidate.of_this_run:
        run.check_own(checkpoint, candidate.path)
    model = rt.prepare(build(cfg), cfg.sync_bn)
    load_weights(model, checkpoint, candidate.path)
    return model


def train(model: nn.Module, phase: str, iteration: int, batches: Any, steps: int, epochs: int, lr: float,
          best: Best, val: SegmentationSet, cfg: Config, rt: Runtime, run: Run,
          mean_teacher: MeanTeacher | None = None) -> dict[str, Any]:
    """One phase with Adam and a cosine schedule to LR_MIN, validated every EVAL_EACH epochs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return fit(model, phase, iteration, batches, steps, epochs, loss_fn, optimizer, best, lr_min=cfg.lr_min,
               seed=cfg.seed, validate=lambda m: validate(m, val, cfg, rt), eval_each=cfg.eval_each, run=run, rt=rt,
               compile_model=cfg.compile, mean_teacher=mean_teacher)


def validate(model: nn.Module, val: SegmentationSet, cfg: Config, rt: Runtime) -> tuple[float, dict[str, Any]]:
    cm = evaluate(model, val.images, val.labels, camvid.NUM_CLASSES, cfg.eval_batch_size, rt)
    return cm.miou(), {"val_miou": cm.miou(), "val_per_class_iou": cm.summary(camvid.CLASS_NAMES)["per_class_iou"]}


def test(model: nn.Module, test_set: SegmentationSet, title: str, cfg: Config, rt: Runtime) -> dict[str, Any]:
    cm = evaluate(model, test_set.images, test_set.labels, camvid.NUM_CLASSES, cfg.eval_batch_size, rt)
    if rt.is_main:
        tqdm.write(f"\nTest set, {title}:\n{cm.table(camvid.CLASS_NAMES)}\n")
    summary = cm.summary(camvid.CLASS_NAMES)
    return {"test_miou": summary["miou"], "test_pixel_acc": summary["pixel_acc"],
            "per_class_iou": summary["per_class_iou"]}


def picture_subset(data: SegmentationSet, count: int) -> SegmentationSet:
    """The same few images every time, spread over the set, so pictures compare across iterations."""
    count = min(count, len(data))
    return data.subset([round(i * (len(data) - 1) / max(count - 1, 1)) for i in range(count)])


# ----------------------------------------------------------------------------- pseudo-labels

def pseudo_label(teacher_model: nn.Module, teacher: Candidate, iteration: int, unlabeled: SegmentationSet | None,
                 cfg: Config, rt: Runtime, run: Run) -> tuple[SegmentationSet, dict[str, Any]]:
    """The teacher labels every unlabeled frame (class-index PNGs at the frames' size, Void below
    PSEUDO_THRESHOLD). Returns the frames the student learns from with their pseudo-labels, and how
    good those are where the split protocol knows the truth."""
    if unlabeled is None or len(unlabeled) == 0:
        raise UserError("There are no unlabeled images to pseudo-label: put frames in "
                        f"{Path(cfg.data_root) / 'unlabeled' / 'train'} or use --labeled_fraction=1/8.")
    folder = pseudo_folder(pseudo_root(cfg), iteration)
    identity = {"run": str(run.folder), "teacher": str(teacher.path), "teacher_val": teacher.val,
                "threshold": cfg.pseudo_threshold, "tta": cfg.pseudo_tta, "tta_scales": cfg.tta_scales,
                "image_scale": cfg.image_scale, "frames": len(unlabeled)}
    kept = label_frames(teacher_model, unlabeled.images, unlabeled.names, unlabeled.source_size, folder, identity,
                        rt, camvid.IGNORE_INDEX, camvid.NUM_CLASSES, cfg.eval_batch_size, cfg.pseudo_threshold,
                        cfg.tta_scales if cfg.pseudo_tta else [1.0], flip=cfg.pseudo_tta,
                        image_share=cfg.pseudo_image_share)
    frames = unlabeled
    if len(kept) < len(frames):  # a copy of the kept frames; all of them need none
        position = {name: i for i, name in enumerate(frames.names)}
        frames = frames.subset([position[name] for name in kept])
    labels = load_labels([folder / f"{name}.png" for name in kept], cfg.image_scale).to(frames.images.device)
    pseudo = SegmentationSet(frames.images, labels, frames.names, frames.source_size)
    shown = picture_subset(pseudo, cfg.pictures)
    if len(shown) and rt.is_main:
        confidence = predict_probs(teacher_model, shown.images, rt).max(1).values.cpu()
        pseudo_label_pictures(shown.images, shown.labels, confidence, shown.names,
                              run.folder / "pictures" / f"it{iteration}_pseudo", camvid.LEGEND)
    truth = None if frames.labels is None else frames.labels.cpu()
    quality = pseudo_quality(labels.cpu(), truth, camvid.NUM_CLASSES, camvid.IGNORE_INDEX)
    return pseudo, {**quality, "pseudo_frames": len(kept)}


# ----------------------------------------------------------------------------- the experiment

def main(argv: list[str]) -> None:
    cfg, rt, run = start_run(globals(), argv, DEMO, "cam", check_config, make_demo_data)
    labeled, unlabeled, val, test_set = load_data(cfg, rt, run)
    if cfg.no_iter > 0 and rt.is_main:  # before the teacher trains for hours
        run.hold(pseudo_root(cfg), "PSEUDO_ROOT", "runs that overlap need their own --pseudo_root, or wait for "
                                                  "that run to finish")
    save_dir = Path(cfg.save_dir)

    def record(model: nn.Module, title: str, tag: str) -> dict[str, Any]:
        """Test results of a model, and pictures of its predictions on a few val images."""
        results = test(model, test_set, title, cfg, rt)
        shown = picture_subset(val, cfg.pictures)
        if len(shown) and rt.is_main:
            prediction_pictures(model, shown.images, shown.labels, shown.names, run.folder / "pictures" / tag, rt,
                                camvid.LEGEND)
        return results

    # The teacher learns from the labeled images, or is given (TEACHER_CHECKPOINT) to compare students on it.
    given = Path(cfg.teacher_checkpoint) if cfg.teacher_checkpoint else None
    if run.summary["teacher"]:  # trained and tested by an earlier process of this run
        teacher = Candidate("teacher", given or save_dir / "teacher_best.pth.tar", run.summary["teacher"]["val_miou"],
                            of_this_run=given is None)
    else:
        with run.timed("teacher"):
            if given:
                teacher = Candidate("teacher", given, math.nan, of_this_run=False)
                teacher.val = validate(trained_model(teacher, cfg, rt, run), val, cfg, rt)[0]
                best_epoch = load_checkpoint(given).get("epoch")
            else:
                best = Best(save_dir / "teacher_best.pth.tar", "val_iou")
                (count,), steps = batch_plan([len(labeled)], cfg.batch_size, rt)
                result = train(fresh_model(cfg, rt, 0), "teacher", 0,
                               lambda generator: labeled_batches(labeled, count, steps, generator, cfg, rt),
                               steps, cfg.teacher_epochs, cfg.teacher_lr, best, val, cfg, rt, run)
                teacher, best_epoch = Candidate("teacher", best.path, best.score), result["best_epoch"]
            run.summary["teacher"] = {"val_miou": teacher.val, "best_epoch": best_epoch,
                                      **record(trained_model(teacher, cfg, rt, run), "teacher", "teacher")}

    for iteration in range(1, cfg.no_iter + 1):
        recorded = {entry["iteration"]: entry for entry in run.summary["iterations"]}
        if iteration in recorded:  # done by an earlier process of this run
            if recorded[iteration]["promoted"]:
                teacher = Candidate(f"student_it{iteration}", save_dir / f"student_it{iteration}_best.pth.tar",
                                    recorded[iteration]["val_miou"])
            continue
        # 1. The teacher labels the unlabeled frames.
        with run.timed(f"it{iteration}_pseudo_label"):
            teacher_model = trained_model(teacher, cfg, rt, run)
            pseudo, quality = pseudo_label(teacher_model, teacher, iteration, unlabeled, cfg, rt, run)
        # 2. A student learns from the pseudo-labels and the labels. With PSEUDO_SOFT the teacher stays to
        # give every pseudo-labeled crop its softmax; with PSEUDO_EMA it follows the student after every step.
        with run.timed(f"it{iteration}_student"):
            model = fresh_model(cfg, rt, iteration) if cfg.student_init == "fresh" else \
                trained_model(teacher, cfg, rt, run)
            best = Best(save_dir / f"student_it{iteration}_best.pth.tar", "val_iou")
            soft_teacher = teacher_model if cfg.pseudo_soft else None
            mean_teacher = MeanTeacher(teacher_model, model, cfg.pseudo_ema) if cfg.pseudo_ema > 0 else None
            if cfg.student_schedule == "joint":  # one phase of mixed batches, at the rate the labels are learned at
                shares = [cfg.joint_labeled_share, 1 - cfg.joint_labeled_share]
                counts, steps = batch_plan([len(labeled), len(pseudo)], cfg.batch_size, rt, shares)
                train(model, f"it{iteration}_joint", iteration,
                      lambda generator: joint_batches(labeled, pseudo, counts, steps, generator, cfg, rt, soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.finetune_lr, best, val, cfg, rt, run, mean_teacher)
            else:  # the thesis: the pseudo-labels first, then fine-tuning on the labels
                (count,), steps = batch_plan([len(pseudo)], cfg.batch_size, rt)
                train(model, f"it{iteration}_pseudo", iteration,
                      lambda generator: pseudo_batches(pseudo, count, steps, generator, cfg, rt, soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.pseudo_lr, best, val, cfg, rt, run, mean_teacher)
                (count,), steps = batch_plan([len(labeled)], cfg.batch_size, rt)
                train(model, f"it{iteration}_finetune", iteration,
                      lambda generator: labeled_batches(labeled, count, steps, generator, cfg, rt),
                      steps, cfg.finetune_epochs, cfg.finetune_lr, best, val, cfg, rt, run)
            # 3. The student is tested, and teaches the next iteration if it validates better (PROMOTE_ALWAYS:
            # always, as in the thesis).
            student = Candidate(f"student_it{iteration}", best.path, best.score)
            promoted = cfg.promote_always or student.val > teacher.val
            entry = {"iteration": iteration, "val_miou": student.val,
                     **record(trained_model(student, cfg, rt, run), f"student, iteration {iteration}",
                              f"it{iteration}"),
                     "promoted": promoted, "teacher": teacher.name, **quality}
        teacher = student if promoted else teacher
        run.summary["iterations"].append(entry)
        run.summary["current_teacher"] = str(teacher.path)
        run.save_summary()
        if rt.is_main:
            tqdm.write(iteration_table(run.summary, "miou"))
    run.finish(rt.is_main)
    teardown()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("Stopped by Ctrl-C. The same command resumes the run.")
