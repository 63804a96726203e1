"""CamVid: its class table, colours and statistics, and the thesis layout.

    DATA_ROOT/{train,val,test}/NAME.png        RGB images (PNG or JPEG)
    DATA_ROOT/{train,val,test}_labels/NAME.png single-channel class indices (0..10, 11 = Void)
    DATA_ROOT/unlabeled/train/NAME.png         unlabeled video frames
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.segmentation import ClassTable, image_files, index_lookup, paired_files

TITLE = "CamVid"
CLASS_NAMES: tuple[str, ...] = (
    "Building", "Tree", "Sky", "Car", "SignSymbol", "Road",
    "Pedestrian", "Fence", "Column_Pole", "Sidewalk", "Bicyclist",
)
NUM_CLASSES: int = len(CLASS_NAMES)
IGNORE_INDEX: int = 11  # Void: excluded from the loss and the metrics.
# Official CamVid colours (label_colors.txt) of the 11 classes, then Void.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (128, 0, 0), (128, 128, 0), (128, 128, 128), (64, 0, 128), (192, 128, 128), (128, 64, 128),
    (64, 64, 0), (64, 64, 128), (192, 192, 128), (0, 0, 192), (0, 128, 192),
    (0, 0, 0),
)

# The statistics the model normalises with, RGB in [0, 255]. "camvid" describes the data (the 367
# train images of the SegNet release, 480x360), as SwiftNet's reference normalises with its data
# set's own statistics also from ImageNet weights; "thesis" keeps the thesis's values, which fit no
# CamVid split, for exact reproduction.
STATISTICS = {
    "camvid": ((105.03, 108.41, 110.33), (78.30, 79.46, 78.34)),
    "thesis": ((111.376, 63.110, 83.670), (41.608, 54.237, 68.889)),
}
CLASSES = ClassTable(CLASS_NAMES, COLOURS, *STATISTICS["camvid"], ignore_name="Void")
LEGEND = CLASSES.legend  # what pictures name each colour
THESIS_CLASSES = ClassTable(CLASS_NAMES, COLOURS, *STATISTICS["thesis"], ignore_name="Void")
LOOKUP = index_lookup(NUM_CLASSES)  # label files hold the indices themselves
LABEL_HINT = ("Is it in another class order (SegNet?) or a raw CamVid mask? Convert it with data/prepare_camvid.py "
              "or data/mask_maker.py.")
LAYOUT_HINT = ("Check DATA_ROOT: put CamVid in the thesis layout there (README, 'Preparing CamVid'), or try the demo "
               "with --demo.")


def classes(root: str | Path, normalization: str = "dataset") -> tuple[ClassTable, np.ndarray]:
    """The class table (with the thesis's statistics for normalization "thesis") and the label lookup."""
    return (THESIS_CLASSES if normalization == "thesis" else CLASSES), LOOKUP


def files(root: str | Path, subset: str) -> tuple[list[Path], list[Path]]:
    """The images of a labeled subset ('train', 'val', 'test') of the thesis layout, and their labels."""
    return paired_files(Path(root) / subset, Path(root) / f"{subset}_labels", LAYOUT_HINT)


def frames(root: str | Path) -> list[Path]:
    """The unlabeled video frames."""
    folder = Path(root) / "unlabeled" / "train"
    return image_files(folder, f"NO_ITER >= 1 with LABELED_FRACTION = 1 pseudo-labels the unlabeled frames there. "
                               f"Extract them with: python data/extract_frames.py VIDEO --out {folder} (README, "
                               "'Preparing CamVid'); or use the split protocol (--labeled_fraction=1/8), or train "
                               "the teacher alone (--no_iter=0).")


def name_of(path: Path) -> str:
    return path.stem
