"""Semi-supervised semantic segmentation of CamVid by iterative pseudo-labeling.

A SwiftNet-RN18 teacher learns from the labeled images; it labels the unlabeled frames; a fresh
student learns from those pseudo-labels and is fine-tuned on the labels (or learns from both at
once); a student that validates better than its teacher becomes the next teacher.

    python semisup_cam.py                          # the thesis protocol on data/camvid
    python semisup_cam.py --demo                   # the same on generated street scenes, CPU, minutes
    python semisup_cam.py --labeled_fraction=1/8 --pseudo_threshold=0.9
    torchrun --nproc_per_node=4 semisup_cam.py     # several GPUs

Every constant below can be overridden as --lower_case_name=value.
"""
import sys

from data.synthetic import make_street_scenes
from utils.segmentation import CamVidSelfTraining
from utils.errors import UserError
from utils.selftrain import start_run

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
STUDENT_SCHEDULE = "staged"  # "staged": pseudo epochs, then fine-tune; "joint": PSEUDO_EPOCHS of mixed batches at FINETUNE_LR
JOINT_LABELED_SHARE = 0.5  # "joint": share of each batch taken from the labeled set, the rest pseudo-labeled
STUDENT_INIT = "fresh"  # "fresh": a new model each iteration (thesis); "teacher": the teacher's weights
PROMOTE_ALWAYS = False  # True: the thesis's behaviour, the student replaces the teacher even when worse
PSEUDO_THRESHOLD = 0.0  # pixels whose teacher confidence is below become ignore
PSEUDO_CLASS_SHARE = 0.0  # > 0: each predicted class keeps at least this share of its pixels (threshold lowered)
PSEUDO_IMAGE_SHARE = 1.0  # < 1: the student learns only from this share of the frames, the most reliable (ST++)
PSEUDO_TTA = False  # pseudo-labels from softmax averaged over flips and TTA_SCALES
PSEUDO_SOFT = False  # True: the student matches the teacher's softmax on each crop, not its argmax
PSEUDO_EMA = 0.0  # > 0: PSEUDO_SOFT's teacher follows the student (STUDENT_INIT="teacher") with this momentum
PSEUDO_ALIGN = False  # with PSEUDO_SOFT: targets rescaled so their running class mean is the labeled set's
TTA_SCALES = [0.75, 1.0, 1.25]
STRONG_AUG = False  # colour jitter, grayscale, blur and CutMix on pseudo-labeled crops
PSEUDO_FEATURE_DROP = 0.0  # > 0: pseudo-labeled crops also learn from encoder features with this share dropped
# Running
PICTURES = 4  # val images (and pseudo-labeled frames) drawn after each model, in RUN_DIR/pictures/
DEVICE = "auto"
SEED = 0
COMPILE = False  # torch.compile the training model (CUDA)
SYNC_BN = False  # synchronised BatchNorm under torchrun
SAVE_DIR = "saved_models/pseudo_cam"
RUN_DIR = ""  # "" = runs/<date-time>_cam/, or the unfinished run of the same config
RESUME = True

DEMO = dict(DATA_ROOT="data/demo_camvid", SAVE_DIR="saved_models/demo_cam", PRETRAINED=False, BATCH_SIZE=8,
            CROP_SIZE=96, TEACHER_EPOCHS=20, EVAL_EACH=4, NO_ITER=2, PSEUDO_EPOCHS=4, FINETUNE_EPOCHS=6,
            PSEUDO_LR=1e-3, FINETUNE_LR=1e-3)


def make_demo_data(root: str) -> None:
    make_street_scenes(root, counts={"train": 64, "val": 12, "test": 24}, unlabeled=96)


def main(argv: list[str]) -> None:
    cfg, rt, run = start_run(globals(), argv, DEMO, "cam", make_demo_data)
    loop = CamVidSelfTraining(cfg, rt, run)

    teacher = loop.train_teacher()
    for iteration in range(1, cfg.no_iter + 1):
        teacher = loop.iterate(teacher, iteration)
    loop.finish()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
