"""Cityscapes in its official layout (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip):

    DATA_ROOT/leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    DATA_ROOT/gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png   (the other gtFine files are not read)

The 34 label ids become the 19 train ids of the official table (cityscapesScripts' labels.py); every
other id becomes ignore (19). An image is named CITY_SEQ_FRAME, as in the published split lists of
data/splits/cityscapes/. The 500 val images are the test set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.segmentation import ClassTable
from utils.errors import UserError

TITLE = "Cityscapes"
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
# label id → train id, for the ids that are evaluated (labels.py: ignoreInEval False)
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
             26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
COLOURS = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
           (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
           (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
           (0, 0, 0))
# The statistics of SwiftNet's reference Cityscapes configs (configs/rn18_pyramid.py), RGB in [0, 255].
CLASSES = ClassTable(NAMES, COLOURS, (73.15, 82.90, 72.3), (47.67, 48.49, 47.73))
LOOKUP = np.full(256, CLASSES.ignore_index, dtype=np.uint8)
LOOKUP[list(TRAIN_IDS)] = list(TRAIN_IDS.values())
LABEL_HINT = ""  # every value is a label id: none is refused
LAYOUT = ("DATA_ROOT must hold Cityscapes' official layout: leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and "
          "gtFine/{train,val}/CITY/*_gtFine_labelIds.png (unzip leftImg8bit_trainvaltest.zip and "
          "gtFine_trainvaltest.zip from cityscapes-dataset.com into it)")


def classes(root: str | Path, normalization: str = "dataset") -> tuple[ClassTable, np.ndarray]:
    return CLASSES, LOOKUP


def files(root: str | Path, subset: str) -> tuple[list[Path], list[Path]] | None:
    """The images of 'train', or of 'test' (the official val), and their label-id masks; a missing file is an
    error that names it. No 'val': VAL_SIZE train images are held out to validate on."""
    if subset == "val":
        return None
    official = "val" if subset == "test" else subset
    image_dir = Path(root) / "leftImg8bit" / official
    if not image_dir.is_dir():
        raise UserError(f"{image_dir} does not exist. {LAYOUT}.")
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise UserError(f"{image_dir} holds no CITY/*{IMAGE_SUFFIX} images. {LAYOUT}.")
    seen: dict[str, Path] = {}
    for path in images:  # images are known by name alone (split lists, pseudo-labels): two cities must not share one
        if name_of(path) in seen:
            raise UserError(f"{seen[name_of(path)]} and {path} have the same name: keep one of them. {LAYOUT}.")
        seen[name_of(path)] = path
    labels = [Path(root) / "gtFine" / official / path.parent.name / (name_of(path) + LABEL_SUFFIX) for path in images]
    missing = [path for path in labels if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(images)} {official} images have no label: "
                        f"{', '.join(map(str, missing[:3]))}{', ...' if len(missing) > 3 else ''}. {LAYOUT}.")
    return images, labels


def frames(root: str | Path) -> list[Path]:
    raise UserError("Cityscapes has no unlabeled frames here: pseudo-label the train images of a published split "
                    "(--split_file=data/splits/cityscapes/unimatch/1_8.txt), or draw one (--labeled_fraction=1/8), "
                    "or train the teacher alone (--no_iter=0).")


def name_of(image: Path) -> str:
    return image.name[: -len(IMAGE_SUFFIX)]
