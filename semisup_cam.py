"""Semi-supervised semantic segmentation of CamVid (or Cityscapes, or your own data) by iterative pseudo-labeling.

A SwiftNet-RN18 teacher learns from the labeled images and labels the unlabeled frames; a student
learns from those pseudo-labels and from the labels (one after the other, as in the thesis, or
mixed in every batch), or makes its own targets online (FixMatch, UniMatch); a student that
validates better than its teacher becomes the next teacher.

    python semisup_cam.py                          # the thesis protocol on data/camvid
    python semisup_cam.py --demo                   # generated street scenes, CPU, minutes
    python semisup_cam.py --labeled_fraction=1/8 --pseudo_threshold=0.9
    python semisup_cam.py --labeled_fraction=1/8 --student_schedule=unimatch --pseudo_threshold=0.95
    python semisup_cam.py --dataset=cityscapes --data_root=data/cityscapes --image_scale=0.5 \
        --split_file=data/splits/cityscapes/unimatch/1_8.txt
    torchrun --nproc_per_node=4 semisup_cam.py     # several GPUs

Every constant below can be overridden as --lower_case_name=value.
"""
import copy
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data.datasets import DATASETS, load_frames, load_subset
from data.segmentation import (ClassTable, SegmentationSet, index_lookup, load_labels, load_set, read_split_file,
                               split_names)
from data.synthetic import make_street_scenes
from data.transforms import cutmix, cutmix_box, photometric, scale_crop_flip, strong_view
from models.swiftnet import convert_reference_state_dict, swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_fitting, load_weights
from utils.config import Config, check_choice, check_loop, check_ranges
from utils.dist import Runtime, seed_everything, teardown
from utils.engine import (Batch, Best, Candidate, Step, batch_plan, cross_entropy, endless_batches, evaluate, fit,
                          predict_probs)
from utils.errors import UserError
from utils.io import read_json, write_json
from utils.pictures import prediction_pictures, pseudo_label_pictures
from utils.pseudo import (MeanTeacher, confident_predictions, label_frames, pseudo_folder, pseudo_quality,
                          soft_targets)
from utils.records import Run, iteration_table, start_run

# Data
DATASET = "camvid"  # "camvid" (thesis layout), "cityscapes", "pascal" (official layouts), "folder" (your own, README)
DATA_ROOT = "data/camvid"  # thesis layout: train/, train_labels/, val/, ..., unlabeled/train/
VAL_SIZE = 100  # cityscapes and folder: train images held out to validate on (CamVid has its own val)
IMAGE_SCALE = 1.0  # resize images (bilinear) and labels (nearest) at load time; 0.5 for CPU runs
MAX_SIDE = 0  # > 0: images whose longer side IMAGE_SCALE leaves above this are shrunk to it (large photos)
EVAL_SCALE = 0.0  # val and test at this scale instead (0 = IMAGE_SCALE); 1.0 tests a half-size model at full size
DATA_ON_DEVICE = True  # keep the decoded dataset on the GPU (uint8), so batches never wait for the host
DATA_CACHE = ""  # a folder: decoded sets stay there as memory-mapped uint8 files (data larger than memory)
LABELED_FRACTION = 1.0  # < 1: split protocol, that share of train keeps its labels, the rest is unlabeled
SPLIT_BY_SEQUENCE = False  # split protocol: labeled images from every sequence in proportion (name before "_")
SPLIT_FILE = ""  # reuse a split (the split.json of an earlier run), or a published list of labeled names (.txt)
MAX_UNLABELED = 0  # cap on unlabeled images for quick runs (0 = all)
PSEUDO_ROOT = ""  # where train_pseudoIt{i}/ go ("" = DATA_ROOT/unlabeled, as in the thesis)
# Model and optimisation (the thesis teacher recipe)
PRETRAINED = True  # ImageNet-initialised encoder (torchvision weights)
PRETRAINED_PATH = ""  # with PRETRAINED: a local ResNet-18 state dict instead of the download (no internet)
INIT_CHECKPOINT = ""  # start new models from this SwiftNet (ours or the reference's, any class count), not ImageNet
NORMALIZATION = "dataset"  # image statistics: "dataset" (the data set's own) or "thesis" (CamVid, to reproduce it)
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
STUDENT_SCHEDULE = "staged"  # "staged": pseudo epochs, then fine-tune; "joint": mixed batches at FINETUNE_LR;
# "fixmatch", "unimatch": labeled and unlabeled crops in every batch, the targets made online from weak views
JOINT_LABELED_SHARE = 0.5  # "joint", "fixmatch", "unimatch": share of each batch taken from the labeled set
UNLABELED_WEIGHT = 1.0  # "fixmatch", "unimatch": weight of the unlabeled loss terms (1 as published)
STUDENT_INIT = "fresh"  # "fresh": a new model each iteration (thesis); "teacher": the teacher's weights
PROMOTE_ALWAYS = False  # True: the thesis's behaviour, the student replaces the teacher even when worse
PSEUDO_THRESHOLD = 0.0  # pixels whose teacher confidence is below become ignore (online: the weak view's)
PSEUDO_IMAGE_SHARE = 1.0  # < 1: the student learns only from this share of the frames, the most reliable (ST++)
PSEUDO_TTA = False  # pseudo-labels from softmax averaged over flips and TTA_SCALES
PSEUDO_SOFT = False  # True: the student matches the teacher's softmax on each crop, not its argmax
PSEUDO_EMA = 0.0  # > 0: a mean teacher of this momentum follows the student: PSEUDO_SOFT's teacher (with
# STUDENT_INIT="teacher"), or the one that gives "fixmatch" and "unimatch" their targets
TTA_SCALES = [0.75, 1.0, 1.25]
STRONG_AUG = False  # colour jitter, grayscale, blur and CutMix on pseudo-labeled crops
# Running
PICTURES = 4  # val images (and pseudo-labeled frames) drawn after each model, in RUN_DIR/pictures/
DEVICE = "auto"
PRECISION = "auto"  # "auto": bf16 autocast and channels-last where the device has bf16 arithmetic, else "fp32"
SEED = 0
COMPILE = False  # torch.compile the training model (CUDA)
SYNC_BN = False  # synchronised BatchNorm under torchrun
SAVE_DIR = "saved_models/pseudo_cam"
RUN_DIR = ""  # "" = runs/<date-time>_cam/, or the unfinished run of the same config
RESUME = True

# The demo: 16 of 160 generated scenes keep their labels; the students are UniMatch's, the method that did
# best on real CamVid, at the threshold the demo's val prefers (0.95, as published; RESULTS.md).
DEMO = dict(DATA_ROOT="data/demo_camvid", SAVE_DIR="saved_models/demo_cam", PRETRAINED=False, LABELED_FRACTION=0.1,
            BATCH_SIZE=8, CROP_SIZE=88, TEACHER_EPOCHS=120, EVAL_EACH=10, NO_ITER=2, STUDENT_SCHEDULE="unimatch",
            STUDENT_INIT="teacher", PSEUDO_THRESHOLD=0.95, PSEUDO_EPOCHS=3, FINETUNE_LR=1e-3)


def is_online(cfg: Config) -> bool:
    """Whether the student makes its own targets (FixMatch, UniMatch), without a teacher's pseudo-labels."""
    return cfg.student_schedule in ("fixmatch", "unimatch")


def check_config(cfg: Config) -> None:
    """Refuses, before the run directory records them, settings that would run but mean something else."""
    check_loop(cfg)
    check_choice(cfg, "student_schedule", ("staged", "joint", "fixmatch", "unimatch"))
    check_choice(cfg, "dataset", tuple(DATASETS))
    check_choice(cfg, "normalization", ("dataset", "thesis"))
    check_ranges(cfg, {
        "image_scale": (lambda v: 0 < v < math.inf, "a positive factor, e.g. 0.5 for half size"),
        "eval_scale": (lambda v: 0 <= v < math.inf, "a positive factor, e.g. 1.0 for full size, or 0 for IMAGE_SCALE"),
        "crop_size": (lambda v: v >= 1, "the side of the square training crops in pixels, e.g. 448"),
        "max_side": (lambda v: v >= 0, "the longest side images keep in pixels, e.g. 512, or 0 for no cap"),
        "val_size": (lambda v: v >= 1, "how many train images to hold out for validation, at least 1"),
        "tta_scales": (lambda v: len(v) > 0 and all(0 < s < math.inf for s in v),
                       "one or more positive scales, e.g. 0.75,1.0,1.25"),
        "pseudo_image_share": (lambda v: 0 < v <= 1, "the share of the pseudo-labeled frames the student learns "
                                                     "from, above 0 and at most 1 (1 = all of them)"),
        "pictures": (lambda v: v >= 0, "how many images to draw after each model, 0 for none"),
    })
    online = is_online(cfg)
    if cfg.pseudo_ema > 0 and not online and not (cfg.pseudo_soft and cfg.student_init == "teacher"):
        raise UserError(f"--pseudo_ema={cfg.pseudo_ema} moves the teacher that gives PSEUDO_SOFT's targets towards a "
                        "student that started from it: set --pseudo_soft=True and --student_init=teacher (a fresh "
                        "student's weights cannot be averaged with the teacher's).")
    offline_only = {"pseudo_soft": False, "pseudo_tta": False, "pseudo_image_share": 1.0, "strong_aug": False}
    if online and (changed := [name for name, default in offline_only.items() if cfg[name] != default]):
        raise UserError(f"--student_schedule={cfg.student_schedule} makes its targets online, with its own weak and "
                        f"strong views: --{changed[0]}={cfg[changed[0]]} acts on pseudo-label files and on "
                        "PSEUDO_SOFT's teacher only. Leave it out.")
    if not online and cfg.unlabeled_weight != 1.0:
        raise UserError(f"--unlabeled_weight={cfg.unlabeled_weight} weighs the online students' unlabeled loss: use "
                        "it with --student_schedule=fixmatch or unimatch.")
    if cfg.normalization == "thesis" and cfg.dataset != "camvid":
        raise UserError(f"--normalization=thesis gives the thesis's CamVid statistics, not {cfg.dataset}'s: use "
                        "--normalization=dataset.")
    if cfg.pretrained_path and not cfg.pretrained:
        raise UserError(f"--pretrained_path={cfg.pretrained_path} holds ImageNet weights, but --pretrained=False "
                        "trains from scratch: set --pretrained=True to start from the file, or leave out "
                        "--pretrained_path.")
    if cfg.split_file and cfg.labeled_fraction != 1:
        raise UserError(f"--split_file={cfg.split_file} says which images keep their labels, so "
                        f"--labeled_fraction={cfg.labeled_fraction} would be ignored: leave one of them out.")
    written = {"teacher_best.pth.tar"} - ({"teacher_best.pth.tar"} if cfg.teacher_checkpoint else set())
    written |= {f"student_it{i}_best.pth.tar" for i in range(1, cfg.no_iter + 1)}
    for name in ("init_checkpoint", "teacher_checkpoint"):
        path = Path(cfg[name]) if cfg[name] else None
        if path and path.name in written and path.parent.resolve() == Path(cfg.save_dir).resolve():
            raise UserError(f"--{name}={path} is a file this run writes into --save_dir={cfg.save_dir}, so it would "
                            f"be replaced while the run still needs it: copy it elsewhere first, or give another "
                            "--save_dir.")
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

def load_data(cfg: Config, rt: Runtime, run: Run) -> tuple[ClassTable, SegmentationSet, SegmentationSet | None,
                                                             SegmentationSet, SegmentationSet]:
    """The class table, and the labeled, unlabeled, val and test images. The unlabeled ones are a folder of
    frames, or in the split protocol (LABELED_FRACTION < 1, or SPLIT_FILE) the train images whose labels
    are hidden (kept to measure the pseudo-labels). A data set without a val set validates on VAL_SIZE train
    images held out of the unlabeled ones, or of the labeled ones where all are labeled; one without a test set
    (folder data) also holds out a test set, the same for every SEED."""
    dataset = DATASETS[cfg.dataset]
    root, scale, cache = Path(cfg.data_root), cfg.image_scale, Path(cfg.data_cache) if cfg.data_cache else None
    eval_scale = cfg.eval_scale or scale
    split_protocol = cfg.labeled_fraction < 1 or bool(cfg.split_file)
    classes, lookup = dataset.classes(root, cfg.normalization)
    image_paths, label_paths = dataset.files(root, "train")
    names = [dataset.name_of(path) for path in image_paths]
    position = {name: i for i, name in enumerate(names)}

    def load(chosen: list[str], at: float = scale) -> SegmentationSet:
        """Decodes only the chosen train images: each image is held once, in the set it belongs to."""
        index = [position[name] for name in chosen]
        return load_set([image_paths[i] for i in index], [label_paths[i] for i in index], lookup, at, cfg.max_side,
                        dataset.LABEL_HINT, chosen, cache)

    wants_frames = not split_protocol and cfg.no_iter > 0
    if wants_frames:  # before the other sets are decoded: a data set without frames says so at once
        dataset.frames(root)
    val, test = (load_subset(cfg.dataset, root, subset, eval_scale, cache, cfg.max_side, cfg.normalization)
                 for subset in ("val", "test"))
    frames = load_frames(cfg.dataset, root, scale, cfg.max_unlabeled, cache, cfg.max_side) if wants_frames else None
    own_val, own_test = val is not None, test is not None
    split = read_split_file(cfg.split_file, names) if cfg.split_file else {}
    if not own_test:  # held out of the train images, the same for every SEED (or as a run's split.json has it)
        test_names = split.get("test") or held_out([n for n in names if n not in set(split.get("labeled", []))],
                                                   cfg.val_size, 0, "test")[0]
        names = [name for name in names if name not in set(test_names)]
        test = load(test_names, eval_scale)
    labeled_names, unlabeled_names = names, []
    if split:
        labeled_names = split["labeled"]
        unlabeled_names = [name for name in split["unlabeled"] if name in set(names)]  # not the held-out test
    elif split_protocol:
        labeled_names, unlabeled_names = split_names(names, cfg.labeled_fraction, cfg.seed, cfg.split_by_sequence)
    if not own_val:
        if split.get("val"):
            val_names = split["val"]
        elif unlabeled_names:
            val_names, unlabeled_names = held_out(unlabeled_names, cfg.val_size, cfg.seed, "val")
        else:
            val_names, labeled_names = held_out(labeled_names, cfg.val_size, cfg.seed, "val")
        val = load(val_names, eval_scale)
    if cfg.max_unlabeled > 0:
        unlabeled_names = unlabeled_names[: cfg.max_unlabeled]
    recorded = {"labeled": labeled_names, "unlabeled": unlabeled_names,
                **({} if frames is None else {"frames": frames.names}),
                **({} if own_val else {"val": val.names}), **({} if own_test else {"test": test.names})}
    check_split(recorded, run)
    if cfg.no_iter > 0 and not (unlabeled_names or frames):  # found now, not after the teacher trained for hours
        raise UserError("No unlabeled images are left to learn from: the split puts every train image in the labeled "
                        "or val set. Lower --labeled_fraction, list fewer labeled images in SPLIT_FILE, or train the "
                        "teacher alone (--no_iter=0).")
    if rt.is_main:
        write_json(run.folder / "split.json", recorded)
    labeled = load(labeled_names)
    unlabeled = load(unlabeled_names) if split_protocol else frames
    if cfg.no_iter > 0 and cfg.pseudo_tta and int(unlabeled.sizes.min()) * min(cfg.tta_scales) < 1:
        raise UserError(f"--tta_scales={','.join(map(str, cfg.tta_scales))} shrinks the smallest unlabeled image "
                        f"({int(unlabeled.sizes.min())} pixels on a side) to nothing: give larger scales.")
    sets = [labeled, unlabeled, val, test]
    if rt.device.type == "cuda" and (cfg.data_on_device or not cache):  # pinned: asynchronous copies
        move = (lambda tensor: tensor.to(rt.device)) if cfg.data_on_device else torch.Tensor.pin_memory
        sets = [s if s is None else s.apply(move) for s in sets]
    return classes, sets[0], sets[1], sets[2], sets[3]


def check_split(split: dict[str, list[str]], run: Run) -> None:
    """A run that has trained something keeps its split: data that would change it (images added, removed or
    renamed) is refused, naming what changed."""
    earlier = read_json(run.folder / "split.json")
    if not (run.progress or run.summary["teacher"]) or not isinstance(earlier, dict):
        return
    for key in sorted(set(split) & set(earlier)):  # a record from older code may lack a key
        now, before = set(split.get(key, [])), set(earlier.get(key, []))
        if now != before:
            added, removed = sorted(now - before), sorted(before - now)
            raise UserError(f"The data changed since the run {run.folder} began: its {key} images would now be "
                            f"{len(now)}, not {len(before)} ({len(added)} new, e.g. {added[:2]}; {len(removed)} gone, "
                            f"e.g. {removed[:2]}). Its models learned from the split in split.json: restore the data, "
                            "or start another run (--run_dir=NEW or --resume=False).")


def held_out(names: list[str], count: int, seed: int, purpose: str) -> tuple[list[str], list[str]]:
    """`count` names drawn with `seed` to set aside for `purpose`, and the rest."""
    if count >= len(names):
        raise UserError(f"VAL_SIZE={count} would hold out every one of the {len(names)} images it is drawn from for "
                        f"{purpose}: give a smaller --val_size.")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = set(order[:count])
    return ([name for i, name in enumerate(names) if i in chosen],
            [name for i, name in enumerate(names) if i not in chosen])


def pseudo_root(cfg: Config) -> Path:
    return Path(cfg.pseudo_root or Path(cfg.data_root) / "unlabeled")


def crops(data: SegmentationSet, index: torch.Tensor, generator: torch.Generator, classes: ClassTable, cfg: Config,
          rt: Runtime) -> Batch:
    """The indexed images and labels, randomly scaled (0.5-2x), cropped and flipped on the device."""
    images, labels, sizes = data.gather(index, classes.mean, classes.ignore_index)
    # padding beyond the image: the mean colour, and ignore
    return scale_crop_flip(images.to(rt.device, non_blocking=True), labels.to(rt.device, non_blocking=True),
                           cfg.crop_size, classes.mean, classes.ignore_index, generator, sizes=sizes)


def pseudo_crops(pseudo: SegmentationSet, index: torch.Tensor, generator: torch.Generator, classes: ClassTable,
                 cfg: Config, rt: Runtime, teacher: nn.Module | None) -> Batch:
    """Crops of pseudo-labeled frames and their targets: the stored pseudo-labels, or with PSEUDO_SOFT the
    teacher's softmax on these very crops (Void where the threshold left pixels out). STRONG_AUG then
    changes colours, blurs and pastes boxes of other crops with their targets (CutMix)."""
    images, labels = crops(pseudo, index, generator, classes, cfg, rt)
    if cfg.pseudo_soft:
        labels = soft_targets(labels, classes.num_classes, classes.ignore_index, rt, teacher, images)
    if cfg.strong_aug:
        images, labels = cutmix(photometric(images, generator), labels, generator)
    return images, labels


def labeled_batches(labeled: SegmentationSet, count: int, steps: int, generator: torch.Generator,
                    classes: ClassTable, cfg: Config, rt: Runtime) -> Iterator[Batch]:
    """The teacher's and the fine-tuning's batches: labeled crops with their labels."""
    ids = endless_batches(len(labeled), count, generator, rt)
    for _ in range(steps):
        yield crops(labeled, next(ids), generator, classes, cfg, rt)


def pseudo_batches(pseudo: SegmentationSet, count: int, steps: int, generator: torch.Generator,
                   classes: ClassTable, cfg: Config, rt: Runtime, teacher: nn.Module | None) -> Iterator[Batch]:
    """The thesis student's first phase: pseudo-labeled crops only."""
    ids = endless_batches(len(pseudo), count, generator, rt)
    for _ in range(steps):
        yield pseudo_crops(pseudo, next(ids), generator, classes, cfg, rt, teacher)


def joint_batches(labeled: SegmentationSet, pseudo: SegmentationSet, counts: list[int], steps: int,
                  generator: torch.Generator, classes: ClassTable, cfg: Config, rt: Runtime,
                  teacher: nn.Module | None) -> Iterator[Batch]:
    """Every batch holds counts[0] labeled crops, then counts[1] pseudo-labeled ones (ST++, Naive-Student);
    with PSEUDO_SOFT the labels become one-hot distributions, to sit beside the teacher's softmax."""
    labeled_ids = endless_batches(len(labeled), counts[0], generator, rt)
    pseudo_ids = endless_batches(len(pseudo), counts[1], generator, rt)
    for _ in range(steps):
        images, labels = crops(labeled, next(labeled_ids), generator, classes, cfg, rt)
        if cfg.pseudo_soft:
            labels = soft_targets(labels, classes.num_classes, classes.ignore_index, rt)
        pseudo_images, pseudo_targets = pseudo_crops(pseudo, next(pseudo_ids), generator, classes, cfg, rt, teacher)
        yield torch.cat([images, pseudo_images]), torch.cat([labels, pseudo_targets])


def unlabeled_crops(unlabeled: SegmentationSet, index: torch.Tensor, generator: torch.Generator,
                    classes: ClassTable, cfg: Config, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak views of unlabeled images (scale, crop, flip as for the labels), and which of their pixels the crop
    padded. Hidden labels are never read."""
    images, _, sizes = unlabeled.gather(index, classes.mean, classes.ignore_index)
    images = images.to(rt.device, non_blocking=True)
    blank = torch.zeros(images.shape[0], *images.shape[2:], dtype=torch.uint8, device=images.device)
    images, padding = scale_crop_flip(images, blank, cfg.crop_size, classes.mean, classes.ignore_index, generator,
                                      sizes=sizes)
    return images, padding == classes.ignore_index


def online_batches(labeled: SegmentationSet, unlabeled: SegmentationSet, counts: list[int], steps: int,
                   generator: torch.Generator, classes: ClassTable, cfg: Config, rt: Runtime) -> Iterator[dict]:
    """FixMatch's and UniMatch's batches (UniMatch's dataset/semi.py): counts[0] labeled crops; counts[1] weak
    views of unlabeled crops, with one strong view each (two for UniMatch) and a CutMix box per strong view; and
    as many crops of other unlabeled images, weak and strong, whose boxes the step pastes in."""
    views = 2 if cfg.student_schedule == "unimatch" else 1
    labeled_ids = endless_batches(len(labeled), counts[0], generator, rt)
    unlabeled_ids = endless_batches(len(unlabeled), counts[1], generator, rt)
    mixing_ids = endless_batches(len(unlabeled), counts[1], generator, rt)
    for _ in range(steps):
        images, labels = crops(labeled, next(labeled_ids), generator, classes, cfg, rt)
        weak, padded = unlabeled_crops(unlabeled, next(unlabeled_ids), generator, classes, cfg, rt)
        weak_mix, padded_mix = unlabeled_crops(unlabeled, next(mixing_ids), generator, classes, cfg, rt)
        yield {"images": images, "labels": labels, "weak": weak, "padded": padded,
               "strong": [strong_view(weak, generator) for _ in range(views)],
               "boxes": [cutmix_box(len(weak), cfg.crop_size, cfg.crop_size, generator).to(rt.device)
                         for _ in range(views)],
               "weak_mix": weak_mix, "padded_mix": padded_mix,
               "strong_mix": [strong_view(weak_mix, generator) for _ in range(views)]}


# ----------------------------------------------------------------------------- training steps

def supervised_step(classes: ClassTable) -> Step:
    """The teacher's, the fine-tuning's and the offline students' step: cross-entropy against the batch's targets
    (labels, pseudo-labels or soft targets)."""
    return lambda model, batch: (cross_entropy(model(batch[0]), batch[1], classes.ignore_index), {})


def online_step(classes: ClassTable, cfg: Config, mean_teacher: MeanTeacher | None) -> Step:
    """FixMatch (one strong view) or UniMatch (two, and the feature-perturbed weak view) for segmentation, as in
    UniMatch's fixmatch.py and unimatch.py. The weak views' predictions are the targets where their confidence
    reaches PSEUDO_THRESHOLD; each strong view gets the targets of the crop it shows, pasted with the same CutMix
    box as its pixels; padded pixels are ignored. The targets come from the student itself (the weak view in the
    same training pass as the labeled crops, detached) or from its mean teacher (PSEUDO_EMA)."""
    unimatch, threshold, ignore = cfg.student_schedule == "unimatch", cfg.pseudo_threshold, classes.ignore_index

    def unlabeled_loss(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
                       padded: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the confident pixels, divided by all the pixels that are not padding."""
        kept = (confidence >= threshold) & ~padded
        return (F.cross_entropy(logits.float(), labels, reduction="none") * kept).sum() / (~padded).sum().clamp(min=1)

    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, weak, padded, count = batch["images"], batch["weak"], batch["padded"], len(batch["images"])
        judge = model if mean_teacher is None else mean_teacher.model
        confidence_mix, labels_mix = confident_predictions(judge, batch["weak_mix"])
        if mean_teacher is not None:
            confidence, labels = confident_predictions(judge, weak)
        if unimatch:
            logits, logits_perturbed = model(torch.cat([images, weak]), perturbed=True)
            logits_perturbed = logits_perturbed[count:]
        else:
            logits = model(torch.cat([images, weak]) if mean_teacher is None else images)
        logits_labeled = logits[:count]
        if mean_teacher is None:
            confidence, labels = logits[count:].detach().float().softmax(1).max(1)
        boxes = batch["boxes"]
        strong = [torch.where(box[:, None], mix, view) for box, mix, view in zip(boxes, batch["strong_mix"],
                                                                                 batch["strong"])]
        logits_strong = model(torch.cat(strong)).chunk(len(strong))
        loss_labeled = cross_entropy(logits_labeled, batch["labels"], ignore)
        losses_strong = [unlabeled_loss(logits_view, torch.where(box, labels_mix, labels),
                                        torch.where(box, confidence_mix, confidence),
                                        torch.where(box, batch["padded_mix"], padded))
                         for logits_view, box in zip(logits_strong, boxes)]
        logs = {"loss_labeled": loss_labeled, "loss_strong": sum(losses_strong) / len(losses_strong)}
        if unimatch:
            logs["loss_perturbed"] = unlabeled_loss(logits_perturbed, labels, confidence, padded)
            unlabeled = 0.25 * losses_strong[0] + 0.25 * losses_strong[1] + 0.5 * logs["loss_perturbed"]
        else:
            unlabeled = losses_strong[0]
        logs["above_threshold"] = ((confidence >= threshold) & ~padded).sum() / (~padded).sum().clamp(min=1) * 100
        return (loss_labeled + cfg.unlabeled_weight * unlabeled) / 2, logs

    return step


# ----------------------------------------------------------------------------- models

def build(classes: ClassTable, cfg: Config, pretrained: bool = False) -> nn.Module:
    return swiftnet_rn18(classes.num_classes, classes.mean, classes.std, pretrained, cfg.pretrained_path)


def fresh_model(classes: ClassTable, cfg: Config, rt: Runtime, salt: int) -> nn.Module:
    """A model to train from its initialisation: INIT_CHECKPOINT, else ImageNet (PRETRAINED) or scratch.
    Seeded per model, so a resumed run builds the same weights as the interrupted one."""
    seed_everything(cfg.seed * 1009 + salt)
    model = build(classes, cfg, pretrained=cfg.pretrained and not cfg.init_checkpoint)
    if cfg.init_checkpoint:
        checkpoint = load_checkpoint(cfg.init_checkpoint)
        state = checkpoint.get("state_dict", checkpoint)
        report = load_fitting(model, convert_reference_state_dict(state) if isinstance(state, dict) else state,
                              cfg.init_checkpoint)
        if rt.is_main:
            tqdm.write(report)
    return rt.prepare(model, cfg.sync_bn)


def trained_model(candidate: Candidate, classes: ClassTable, cfg: Config, rt: Runtime, run: Run) -> nn.Module:
    """The weights of a best checkpoint; one of this run's must not have been replaced by another run's."""
    checkpoint = load_checkpoint(candidate.path)
    if candidate.of_this_run:
        run.check_own(checkpoint, candidate.path)
    model = rt.prepare(build(classes, cfg), cfg.sync_bn)
    load_weights(model, checkpoint, candidate.path)
    return model


def train(model: nn.Module, phase: str, iteration: int, batches: Any, steps: int, epochs: int, lr: float,
          best: Best, val: SegmentationSet, classes: ClassTable, cfg: Config, rt: Runtime, run: Run,
          step: Step | None = None, mean_teacher: MeanTeacher | None = None) -> dict[str, Any]:
    """One phase with Adam and a cosine schedule to LR_MIN, validated every EVAL_EACH epochs; `step` gives the
    loss (`supervised_step` by default). A mean teacher follows the model after every step, and is validated too."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return fit(model, phase, iteration, batches, steps, epochs, step or supervised_step(classes), optimizer, best,
               lambda m: validate(m, val, classes, cfg, rt, mean_teacher), run, rt,
               after_step=mean_teacher.update if mean_teacher else None,
               beside={"mean_teacher": mean_teacher.model} if mean_teacher else None)


def validate(model: nn.Module, val: SegmentationSet, classes: ClassTable, cfg: Config, rt: Runtime,
             mean_teacher: MeanTeacher | None = None) -> tuple[float, dict[str, Any]]:
    cm = evaluate(model, val.batches(cfg.eval_batch_size), classes.num_classes, rt)
    details = {"val_miou": cm.miou(), "val_per_class_iou": cm.summary(classes.names)["per_class_iou"]}
    if mean_teacher is not None:  # often the better model of the two (Mean Teacher)
        details["mean_teacher_score"] = evaluate(mean_teacher.model, val.batches(cfg.eval_batch_size),
                                                 classes.num_classes, rt).miou()
    return cm.miou(), details


def test(model: nn.Module, test_set: SegmentationSet, title: str, classes: ClassTable, cfg: Config,
         rt: Runtime) -> dict[str, Any]:
    cm = evaluate(model, test_set.batches(cfg.eval_batch_size), classes.num_classes, rt)
    if rt.is_main:
        tqdm.write(f"\nTest set, {title}:\n{cm.table(classes.names)}\n")
    summary = cm.summary(classes.names)
    return {"test_miou": summary["miou"], "test_pixel_acc": summary["pixel_acc"],
            "per_class_iou": summary["per_class_iou"]}


def picture_subset(data: SegmentationSet, count: int) -> SegmentationSet:
    """The same few images every time, spread over the set, so pictures compare across iterations."""
    count = min(count, len(data))
    return data.subset([round(i * (len(data) - 1) / max(count - 1, 1)) for i in range(count)])


# ----------------------------------------------------------------------------- pseudo-labels

def pseudo_label(teacher_model: nn.Module, teacher: Candidate, iteration: int, unlabeled: SegmentationSet | None,
                 classes: ClassTable, cfg: Config, rt: Runtime, run: Run) -> tuple[SegmentationSet, dict[str, Any]]:
    """The teacher labels every unlabeled frame (class-index PNGs at the frames' size, ignore below
    PSEUDO_THRESHOLD). Returns the frames the student learns from with their pseudo-labels, and how
    good those are where the split protocol knows the truth."""
    if unlabeled is None or len(unlabeled) == 0:
        raise UserError("There are no unlabeled images to pseudo-label: give unlabeled frames (README) or use "
                        "--labeled_fraction=1/8.")
    folder = pseudo_folder(pseudo_root(cfg), iteration)
    identity = {"run": str(run.folder), "teacher": str(teacher.path), "teacher_val": teacher.val,
                "threshold": cfg.pseudo_threshold, "tta": cfg.pseudo_tta, "tta_scales": cfg.tta_scales,
                "image_scale": cfg.image_scale, "frames": len(unlabeled),
                **({"max_side": cfg.max_side} if cfg.max_side else {})}
    kept = label_frames(teacher_model, unlabeled, folder, identity, rt, classes.ignore_index, classes.num_classes,
                        cfg.eval_batch_size, cfg.pseudo_threshold, cfg.tta_scales if cfg.pseudo_tta else [1.0],
                        flip=cfg.pseudo_tta, image_share=cfg.pseudo_image_share)
    frames = unlabeled
    if len(kept) < len(frames):  # a copy of the kept frames; all of them need none
        frames = frames.named(kept)
    labels = load_labels([folder / f"{name}.png" for name in kept], index_lookup(classes.num_classes),
                         cfg.image_scale, max_side=cfg.max_side).to(frames.images.device)
    pseudo = SegmentationSet(frames.images, labels, frames.names, frames.sizes, frames.source_sizes)
    shown = picture_subset(pseudo, cfg.pictures)
    for group in shown.groups(max(len(shown), 1)) if rt.is_main else []:
        images, pseudo_labels = shown.stack(group)
        confidence = predict_probs(teacher_model, images, rt).max(1).values.cpu()
        pseudo_label_pictures(images, pseudo_labels, confidence, [shown.names[i] for i in group],
                              run.folder / "pictures" / f"it{iteration}_pseudo", classes.legend)
    truth = None if frames.labels is None else frames.labels.cpu()
    quality = pseudo_quality(labels.cpu(), truth, classes.num_classes, classes.ignore_index)
    return pseudo, {**quality, "pseudo_frames": len(kept)}


def prediction_quality(model: nn.Module, unlabeled: SegmentationSet, classes: ClassTable, cfg: Config,
                       rt: Runtime) -> dict[str, Any]:
    """The online students' counterpart of the pseudo-label quality: how good the model's predictions on the
    unlabeled images are, where the split protocol knows their labels."""
    quality: dict[str, Any] = {"pseudo_pixel_acc": None, "pseudo_miou": None, "pseudo_ignored_frac": None,
                               "pseudo_frames": len(unlabeled)}
    if unlabeled.labels is not None:
        cm = evaluate(model, unlabeled.batches(cfg.eval_batch_size), classes.num_classes, rt)
        quality.update(pseudo_pixel_acc=cm.pixel_accuracy(), pseudo_miou=cm.miou())
    return quality


# ----------------------------------------------------------------------------- the experiment

def main(argv: list[str]) -> None:
    cfg, rt, run = start_run(globals(), argv, DEMO, "cam", check_config, make_demo_data)
    run.summary["data"] = DATASETS[cfg.dataset].TITLE  # what the report calls the run's data
    classes, labeled, unlabeled, val, test_set = load_data(cfg, rt, run)
    run.carried["classes"] = dataclasses.asdict(classes)  # predict.py needs no data folder, only the checkpoint
    if cfg.no_iter > 0 and not is_online(cfg) and rt.is_main:  # before the teacher trains for hours
        run.hold(pseudo_root(cfg), "PSEUDO_ROOT", "runs that overlap need their own --pseudo_root, or wait for "
                                                  "that run to finish")
    save_dir = Path(cfg.save_dir)

    def record(model: nn.Module, title: str, tag: str) -> dict[str, Any]:
        """Test results of a model, and pictures of its predictions on a few val images."""
        results = test(model, test_set, title, classes, cfg, rt)
        shown = picture_subset(val, cfg.pictures)
        for group in shown.groups(max(len(shown), 1)) if rt.is_main else []:
            images, labels = shown.stack(group)
            prediction_pictures(model, images, labels, [shown.names[i] for i in group], run.folder / "pictures" / tag,
                                rt, classes.legend)
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
                teacher.val = validate(trained_model(teacher, classes, cfg, rt, run), val, classes, cfg, rt)[0]
                best_epoch = load_checkpoint(given).get("epoch")
            else:
                best = Best(save_dir / "teacher_best.pth.tar", "val_iou")
                (count,), steps = batch_plan([len(labeled)], cfg.batch_size, rt)
                result = train(fresh_model(classes, cfg, rt, 0), "teacher", 0,
                               lambda generator: labeled_batches(labeled, count, steps, generator, classes, cfg, rt),
                               steps, cfg.teacher_epochs, cfg.teacher_lr, best, val, classes, cfg, rt, run)
                teacher, best_epoch = Candidate("teacher", best.path, best.score), result["best_epoch"]
            run.summary["teacher"] = {"val_miou": teacher.val, "best_epoch": best_epoch,
                                      **record(trained_model(teacher, classes, cfg, rt, run), "teacher", "teacher")}

    for iteration in range(1, cfg.no_iter + 1):
        recorded = {entry["iteration"]: entry for entry in run.summary["iterations"]}
        if iteration in recorded:  # done by an earlier process of this run
            if recorded[iteration]["promoted"]:
                teacher = Candidate(f"student_it{iteration}", save_dir / f"student_it{iteration}_best.pth.tar",
                                    recorded[iteration]["val_miou"])
            continue
        online = is_online(cfg)
        # 1. The teacher labels the unlabeled frames (an online student makes its own targets instead).
        if not online:
            with run.timed(f"it{iteration}_pseudo_label"):
                teacher_model = trained_model(teacher, classes, cfg, rt, run)
                pseudo, quality = pseudo_label(teacher_model, teacher, iteration, unlabeled, classes, cfg, rt, run)
        elif unlabeled is None or len(unlabeled) == 0:
            raise UserError("There are no unlabeled images to learn from: give unlabeled frames (README) or use "
                            "--labeled_fraction=1/8.")
        # 2. A student learns from the pseudo-labels and the labels, or (online) from the labels and its own targets.
        # With PSEUDO_SOFT the teacher stays to give every pseudo-labeled crop its softmax; a mean teacher (PSEUDO_EMA)
        # follows the student after every step.
        with run.timed(f"it{iteration}_student"):
            model = fresh_model(classes, cfg, rt, iteration) if cfg.student_init == "fresh" else \
                trained_model(teacher, classes, cfg, rt, run)
            best = Best(save_dir / f"student_it{iteration}_best.pth.tar", "val_iou")
            soft_teacher = teacher_model if cfg.pseudo_soft else None
            # A mean teacher starts from the student's own weights: an offline student's, from its teacher.
            mean_teacher = None if cfg.pseudo_ema == 0 else \
                MeanTeacher(copy.deepcopy(model) if online else teacher_model, model, cfg.pseudo_ema)
            if online:  # FixMatch, UniMatch: labeled and unlabeled crops in every batch, one phase
                shares = [cfg.joint_labeled_share, 1 - cfg.joint_labeled_share]
                counts, steps = batch_plan([len(labeled), len(unlabeled)], cfg.batch_size, rt, shares)
                train(model, f"it{iteration}_{cfg.student_schedule}", iteration,
                      lambda generator: online_batches(labeled, unlabeled, counts, steps, generator, classes, cfg, rt),
                      steps, cfg.pseudo_epochs, cfg.finetune_lr, best, val, classes, cfg, rt, run,
                      online_step(classes, cfg, mean_teacher), mean_teacher)
            elif cfg.student_schedule == "joint":  # one phase of mixed batches, at the rate the labels are learned at
                shares = [cfg.joint_labeled_share, 1 - cfg.joint_labeled_share]
                counts, steps = batch_plan([len(labeled), len(pseudo)], cfg.batch_size, rt, shares)
                train(model, f"it{iteration}_joint", iteration,
                      lambda generator: joint_batches(labeled, pseudo, counts, steps, generator, classes, cfg, rt,
                                                      soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.finetune_lr, best, val, classes, cfg, rt, run,
                      mean_teacher=mean_teacher)
            else:  # the thesis: the pseudo-labels first, then fine-tuning on the labels
                (count,), steps = batch_plan([len(pseudo)], cfg.batch_size, rt)
                train(model, f"it{iteration}_pseudo", iteration,
                      lambda generator: pseudo_batches(pseudo, count, steps, generator, classes, cfg, rt, soft_teacher),
                      steps, cfg.pseudo_epochs, cfg.pseudo_lr, best, val, classes, cfg, rt, run,
                      mean_teacher=mean_teacher)
                (count,), steps = batch_plan([len(labeled)], cfg.batch_size, rt)
                train(model, f"it{iteration}_finetune", iteration,
                      lambda generator: labeled_batches(labeled, count, steps, generator, classes, cfg, rt),
                      steps, cfg.finetune_epochs, cfg.finetune_lr, best, val, classes, cfg, rt, run)
            # 3. The student is tested, and teaches the next iteration if it validates better (PROMOTE_ALWAYS:
            # always, as in the thesis).
            student = Candidate(f"student_it{iteration}", best.path, best.score)
            promoted = cfg.promote_always or student.val > teacher.val
            student_model = trained_model(student, classes, cfg, rt, run)
            if online:  # no pseudo-labels: how good the student's own predictions on the unlabeled images are
                quality = prediction_quality(student_model, unlabeled, classes, cfg, rt)
            entry = {"iteration": iteration, "val_miou": student.val,
                     **record(student_model, f"student, iteration {iteration}", f"it{iteration}"),
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
