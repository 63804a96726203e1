"""Lay out CamVid as the training code reads it, from the official download or the SegNet release.

Both become OUT/{train,val,test} images and OUT/{train,val,test}_labels index masks in the thesis class order,
named like their images. The folders are checked against the split lists (data/splits: SegNet's 367/101/233),
so an incomplete download fails here, naming the files, instead of training on fewer images.

    python data/prepare_camvid.py --images DIR --labels DIR --out data/camvid
    python data/prepare_camvid.py --segnet DIR --out data/camvid
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as `python data/prepare_camvid.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import IGNORE_INDEX  # noqa: E402
from data.mask_maker import class_index, convert_file, pair_labels, run_in_threads  # noqa: E402
from utils.io import atomic_open, write_png  # noqa: E402

SUBSETS = ("train", "val", "test")
DEFAULT_SPLITS = Path(__file__).resolve().parent / "splits"
DEFAULT_OUT = Path(__file__).resolve().parent / "camvid"

# Class of each index in the SegNet release's labels.
SEGNET_ORDER = (
    "Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist", "Void",
)
# SegNet index -> thesis index for every byte value; anything past Void becomes Void.
SEGNET_TO_THESIS = np.full(256, IGNORE_INDEX, dtype=np.uint8)
SEGNET_TO_THESIS[: len(SEGNET_ORDER)] = [class_index(name) for name in SEGNET_ORDER]


def read_split(path: Path) -> list[str]:
    """Image file names of one subset; SegNet's `image label` path lines are accepted too."""
    if not path.is_file():
        raise SystemExit(f"prepare_camvid: split list {path} not found; give --splits the folder "
                         f"holding {', '.join(s + '.txt' for s in SUBSETS)}.")
    return [Path(line.split()[0]).name for line in path.read_text().splitlines() if line.strip()]


def load_splits(folder: Path) -> dict[str, list[str]]:
    """Subset -> image names; a name in two subsets would leak test frames into training."""
    splits = {subset: read_split(folder / f"{subset}.txt") for subset in SUBSETS}
    seen: dict[str, str] = {}
    for subset, names in splits.items():
        for name in names:
            if name in seen:
                raise SystemExit(f"prepare_camvid: {name} is listed in both {seen[name]}.txt and "
                                 f"{subset}.txt in {folder}; each image must be in one subset only.")
            seen[name] = subset
    return splits


def _listing(names: list[str]) -> str:
    """Count and the first ten names: enough to find the problem without flooding the terminal."""
    return f"{len(names)} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"


def check_names(expected: Iterable[str], found: dict[str, Path], where: Path, what: str) -> dict[str, Path]:
    """`found` (name -> file of the folder `where`); stops with the missing and extra names when the folder does
    not hold exactly the split."""
    expected = set(expected)
    missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
    problems = []
    if missing:
        problems.append(f"missing {what} {_listing(missing)}")
    if extra:
        problems.append(f"extra {what} not in the split lists {_listing(extra)}")
    if problems:
        raise SystemExit(f"prepare_camvid: {where} has {len(found)} {what}, the split lists expect "
                         f"{len(expected)}: {'; '.join(problems)}. Use the complete CamVid release, "
                         f"or give --splits lists that match the folder.")
    return found


def index_folder(folder: Path) -> dict[str, Path]:
    """File name -> file for the PNGs of a folder."""
    if not folder.is_dir():
        raise SystemExit(f"prepare_camvid: folder {folder} not found; check the path you gave.")
    return {path.name: path for path in sorted(folder.glob("*.png"))}


def copy_image(src: Path, dst: Path) -> int:
    """Images are already PNG: copy the bytes rather than decode and re-encode them."""
    with open(src, "rb") as source, atomic_open(dst, "wb") as target:
        shutil.copyfileobj(source, target)
    return 0


def remap_segnet_label(src: Path, dst: Path) -> int:
    """Rewrite one SegNet label in thesis order; returns how many pixels had no SegNet class."""
    try:
        with Image.open(src) as image:
            label = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise SystemExit(f"prepare_camvid: {src} cannot be read as an image ({error}); replace it with the "
                         "file of the SegNet release.") from None
    if label.ndim != 2:
        raise SystemExit(f"prepare_camvid: {src} has shape {label.shape}; --segnet expects "
                         f"single-channel index labels (for coloured masks use --images/--labels).")
    label = np.minimum(label, 255).astype(np.uint8, copy=False)
    write_png(dst, SEGNET_TO_THESIS[label])
    return int(np.count_nonzero(label >= len(SEGNET_ORDER)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="official download: folder of the 701 images")
    parser.add_argument("--labels", type=Path, help="official download: folder of the _L.png masks")
    parser.add_argument("--segnet", type=Path, help="SegNet release: folder of train, trainannot, val, ...")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--splits", type=Path, default=DEFAULT_SPLITS, help="folder of train.txt, val.txt, test.txt")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: give at least 1 thread")
    official = args.images is not None or args.labels is not None
    if official == (args.segnet is not None):
        parser.error("give either --images and --labels (official download) or --segnet")
    if official and (args.images is None or args.labels is None):
        parser.error("the official download needs both --images and --labels")
    splits = load_splits(args.splits)
    # Everything is written beside OUT first and moved in at the end: a file that cannot be read stops the
    # run with OUT as it was, not half replaced.
    staging = args.out.parent / f".{args.out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        # Image name -> image file, and -> label file (the official `_L` mask, or SegNet's index label).
        if official:  # one folder each for all subsets
            wanted = [name for names in splits.values() for name in names]
            image_files = check_names(wanted, index_folder(args.images), args.images, "images")
            label_files = check_names(wanted, pair_labels(args.labels), args.labels, "labels (shown by image name)")
        else:  # folders <subset> and <subset>annot
            image_files, label_files = {}, {}
            for subset, names in splits.items():
                for files, folder, what in ((image_files, args.segnet / subset, "images"),
                                            (label_files, args.segnet / f"{subset}annot", "labels")):
                    files.update(check_names(names, index_folder(folder), folder, what))
        write_label = convert_file if official else remap_segnet_label
        tasks: dict[Path, Callable[[], int]] = {}
        for subset, names in splits.items():
            for name in names:
                tasks[image_files[name]] = partial(copy_image, image_files[name], staging / subset / name)
                tasks[label_files[name]] = partial(write_label, label_files[name], staging / f"{subset}_labels" / name)
        counts = run_in_threads(tasks, args.workers, "camvid", "file")
        for path in sorted(staging.rglob("*.png")):
            target = args.out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    except OSError as error:
        raise SystemExit(f"prepare_camvid: cannot write {error.filename or args.out} ({error.strerror or error}): "
                         f"give a writable --out with room for CamVid (about 0.5 GB).") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = ", ".join(f"{subset} {len(names)}" for subset, names in splits.items())
    bad = sum(1 for count in counts.values() if count)
    print(f"prepared {sizes} image/label pairs in {args.out}; {bad} labels had pixels outside the "
          f"classes ({sum(counts.values())} pixels mapped to Void)")


if __name__ == "__main__":
    main()
