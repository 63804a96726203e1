"""Pascal VOC 2012 in its official layout, with the SBD-augmented masks where they are:

    DATA_ROOT/JPEGImages/NAME.jpg
    DATA_ROOT/SegmentationClass/NAME.png              palette PNGs of class indices 0..20, 255 on boundaries
    DATA_ROOT/ImageSets/Segmentation/{train,val}.txt  the 1,464 train and 1,449 val names
    DATA_ROOT/SegmentationClassAug/NAME.png           optional: single-channel masks of the augmented set

Training draws from the 1,464 finely labeled train images, or where SegmentationClassAug/ is there from
the 10,582 images it labels outside val. The 1,449 val images are the test set; VAL_SIZE train images
are held out to validate on. The labeled lists of UniMatch and U2PL are in data/splits/pascal/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.segmentation import IMAGENET, ClassTable, index_lookup, voc_palette
from utils.errors import UserError

TITLE = "Pascal VOC 2012"
NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
         "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# VOC's colour map, and its colour of the boundary value 255 for ignore.
CLASSES = ClassTable(NAMES, (*voc_palette(len(NAMES)), (224, 224, 192)), *IMAGENET, ignore_name="boundary")
LOOKUP = index_lookup(len(NAMES), [255])
LABEL_HINT = "VOC masks hold class indices 0..20 and 255 on object boundaries."
LAYOUT = ("DATA_ROOT must be the VOC2012 folder: JPEGImages/*.jpg, SegmentationClass/*.png and "
          "ImageSets/Segmentation/{train,val}.txt (VOCtrainval_11-May-2012.tar), optionally SegmentationClassAug/")


def classes(root: str | Path, normalization: str = "dataset") -> tuple[ClassTable, np.ndarray]:
    return CLASSES, LOOKUP


def _names(root: Path, listed: str) -> list[str]:
    path = root / "ImageSets" / "Segmentation" / f"{listed}.txt"
    if not path.is_file():
        raise UserError(f"{path} does not exist. {LAYOUT}.")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def files(root: str | Path, subset: str) -> tuple[list[Path], list[Path]] | None:
    """The images of 'train' (the augmented set where its masks are there) or of 'test' (the official val),
    and their masks; a missing file is an error that names it. No 'val': VAL_SIZE train images are held out."""
    if subset == "val":
        return None
    root = Path(root)
    augmented = root / "SegmentationClassAug"
    if subset == "train" and augmented.is_dir():
        test = set(_names(root, "val"))
        names = sorted(p.stem for p in augmented.glob("*.png") if p.stem not in test)
        label_dir = augmented
    else:
        names, label_dir = _names(root, "train" if subset == "train" else "val"), root / "SegmentationClass"
    images = [root / "JPEGImages" / f"{name}.jpg" for name in names]
    labels = [label_dir / f"{name}.png" for name in names]
    missing = [path for path in images + labels if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} files of the {len(names)} {subset} images and masks are missing: "
                        f"{', '.join(map(str, missing[:3]))}{', ...' if len(missing) > 3 else ''}. {LAYOUT}.")
    if not names:
        raise UserError(f"No {subset} images are listed in {root}. {LAYOUT}.")
    return images, labels


def frames(root: str | Path) -> list[Path]:
    raise UserError("Pascal VOC has no unlabeled frames here: train on a published split of the train images "
                    "(--split_file=data/splits/pascal/unimatch/1_8.txt), or draw one (--labeled_fraction=1/8), or "
                    "train the teacher alone (--no_iter=0).")


def name_of(path: Path) -> str:
    return path.stem
