"""Your own data: a folder of images, their label masks and a class file.

    DATA_ROOT/classes.json       {"names": ["road", "car", ...], "ignore": 255,
                                  "colours": [[128, 64, 128], ...], "mean": [...], "std": [...]}
    DATA_ROOT/images/NAME.jpg    RGB images (PNG or JPEG) of any size and orientation
    DATA_ROOT/labels/NAME.png    single-channel class indices 0..C-1 (and the ignore value), each its image's size
    DATA_ROOT/unlabeled/NAME.jpg optional: unlabeled images

Only "names" is required. "ignore" is the label value of pixels no class is learned from (default:
none besides C); "colours" draw pictures and colour masks (default: Pascal VOC's colour map); "mean"
and "std" are the RGB statistics in [0, 255] the model normalises with (default: ImageNet's).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from data.segmentation import IMAGE_SUFFIXES, IMAGENET, ClassTable, image_files, index_lookup, paired_files, voc_palette
from utils.errors import UserError

TITLE = "your own data"
HINT = "DATA_ROOT must hold classes.json, images/ and labels/ (README, 'Cityscapes, Pascal VOC and your own data')."
LABEL_HINT = "Check the label against classes.json."


def _check(path: Path, ok: bool, what: str) -> None:
    if not ok:
        raise UserError(f"{path}: {what}. {HINT}")


def classes(root: str | Path, normalization: str = "dataset") -> tuple[ClassTable, np.ndarray]:
    """The class table of classes.json and the lookup from label values to class indices."""
    path = Path(root) / "classes.json"
    try:
        spec: Any = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}). {HINT}") from error
    _check(path, isinstance(spec, dict) and isinstance(spec.get("names"), list), 'needs "names", a list of class names')
    names = spec["names"]
    _check(path, 1 <= len(names) <= 254 and all(isinstance(n, str) for n in names) and len(set(names)) == len(names),
           '"names" must be 1 to 254 different strings')
    ignore = spec.get("ignore")
    _check(path, ignore is None or (isinstance(ignore, int) and len(names) <= ignore <= 255),
           f'"ignore" must be a label value from {len(names)} to 255, above the class indices 0..{len(names) - 1}')
    colours = spec.get("colours", voc_palette(len(names) + 1)[1:])  # black stays for ignore
    _check(path, isinstance(colours, list | tuple), '"colours" must be a list of [r, g, b], one per class')
    if len(colours) == len(names):
        colours = [*colours, (0, 0, 0)]  # ignore: black
    _check(path, len(colours) == len(names) + 1 and all(
        isinstance(c, list | tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in colours), '"colours" must give one [r, g, b] (0..255) per class, and optionally one for ignore')
    mean, std = spec.get("mean", IMAGENET[0]), spec.get("std", IMAGENET[1])
    _check(path, all(isinstance(v, list | tuple) and len(v) == 3 and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v) for v in (mean, std))
           and min(std) > 0, '"mean" and "std" must be three finite numbers each, "std" above 0')
    table = ClassTable(tuple(names), tuple(tuple(c) for c in colours), tuple(mean), tuple(std))
    return table, index_lookup(len(names), [] if ignore is None else [ignore])


def files(root: str | Path, subset: str) -> tuple[list[Path], list[Path]] | None:
    """The images of 'train' and their labels, paired by name; no 'val' or 'test': VAL_SIZE images are held out
    for each."""
    return paired_files(Path(root) / "images", Path(root) / "labels", HINT) if subset == "train" else None


def frames(root: str | Path) -> list[Path]:
    """The images of unlabeled/."""
    folder = Path(root) / "unlabeled"
    if not (folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())):
        state = "holds no images (the pseudo-label folders of earlier runs are not images to learn from)" \
            if folder.is_dir() else "does not exist"
        raise UserError(f"{folder} {state}, but NO_ITER >= 1 with LABELED_FRACTION = 1 pseudo-labels the images "
                        "there: add them, or use the split protocol (--labeled_fraction=1/8), or train the teacher "
                        "alone (--no_iter=0).")
    return image_files(folder, HINT)


def name_of(path: Path) -> str:
    return path.stem
