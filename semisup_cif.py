"""Semi-supervised CIFAR-10 classification by iterative pseudo-labeling (2% of the labels).

The same loop as semisup_cam.py: a ResNet-18 teacher learns from the labeled images, labels the
rest, a fresh student learns from the pseudo-labels and is fine-tuned on the labels (or learns
from both at once), and a student that validates better becomes the next teacher.

    python semisup_cif.py                    # the thesis protocol; downloads CIFAR-10 if online
    python semisup_cif.py --demo             # a synthetic 10-class set, CPU, minutes
    python semisup_cif.py --pseudo_threshold=0.95 --student_schedule=joint --strong_aug=True

Every constant below can be overridden as --lower_case_name=value.
"""
import sys

from data.synthetic import make_cifar_like
from utils.classification import CifarSelfTraining
from utils.errors import UserError
from utils.selftrain import start_run

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
STUDENT_SCHEDULE = "staged"  # "staged": pseudo epochs, then fine-tune; "joint": PSEUDO_EPOCHS of mixed batches at FINETUNE_LR
JOINT_LABELED_SHARE = 0.5  # "joint": share of each batch taken from the labeled set, the rest pseudo-labeled
STUDENT_INIT = "fresh"  # "fresh": a new model each iteration (thesis); "teacher": the teacher's weights
PROMOTE_ALWAYS = False  # True: the thesis's behaviour, the student replaces the teacher even when worse
PSEUDO_THRESHOLD = 0.0  # unlabeled images whose teacher confidence is below are left out
PSEUDO_CLASS_SHARE = 0.0  # > 0: each predicted class keeps at least this share of its images (threshold lowered)
PSEUDO_SOFT = False  # True: the student matches the teacher's softmax on each crop, not its argmax
PSEUDO_EMA = 0.0  # > 0: PSEUDO_SOFT's teacher follows the student (STUDENT_INIT="teacher") with this momentum
PSEUDO_ALIGN = False  # with PSEUDO_SOFT: targets rescaled so their running class mean is the labeled set's
STRONG_AUG = False  # colour jitter, grayscale, blur and cutout on pseudo-labeled images
# Running
DEVICE = "auto"
SEED = 0
COMPILE = False
SYNC_BN = False
SAVE_DIR = "saved_models/pseudo_cifar"
RUN_DIR = ""  # "" = runs/<date-time>_cif/, or the unfinished run of the same config
RESUME = True

DEMO = dict(DATA_ROOT="data/demo_cifar", SAVE_DIR="saved_models/demo_cifar", LABELED_FRACTION=0.2,
            BALANCED_SPLIT=True, WIDTH=16, VAL_SIZE=200, MAX_UNLABELED=1000, BATCH_SIZE=64, EVAL_BATCH_SIZE=500,
            TEACHER_LR=0.05, PSEUDO_LR=0.05, FINETUNE_LR=0.02, TEACHER_EPOCHS=30, EVAL_EACH=6, NO_ITER=2,
            PSEUDO_EPOCHS=4, FINETUNE_EPOCHS=5)


def make_demo_data(root: str) -> None:
    make_cifar_like(root, n_train=3000, n_test=500)


def main(argv: list[str]) -> None:
    cfg, rt, run = start_run(globals(), argv, DEMO, "cif", make_demo_data)
    loop = CifarSelfTraining(cfg, rt, run)

    teacher = loop.train_teacher()
    for iteration in range(1, cfg.no_iter + 1):
        teacher = loop.iterate(teacher, iteration)
    loop.finish()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as error:
        sys.exit(f"error: {error}")
