"""Lay out CamVid the way the training code reads it, from either public release.

The official download (701 images and 701 coloured `<image>_L.png` masks in one folder each)
and the SegNet release (one folder per subset, index masks in SegNet's class order) both end
up as `OUT/{train,val,test}` images and `OUT/{train,val,test}_labels` index masks in the thesis
class order, with the image's file name, so images and labels pair by name. The standard
367/101/233 split ships in data/splits so every run trains and tests on the same frames; the
folders are checked against it so an incomplete download fails here, naming the files, instead
of silently training on fewer images.

    python data/prepare_camvid.py --images DIR --labels DIR --out data/camvid
    python data/prepare_camvid.py --segnet DIR --out data/camvid
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python data/prepare_camvid.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import IGNORE_INDEX  # noqa: E402
from data.mask_maker import class_index, convert_file, pair_labels, report_unknown  # noqa: E402
from utils.io import atomic_open, write_png  # noqa: E402

SUBSETS = ("train", "val", "test")
DEFAULT_SPLITS = Path(__file__).resolve().parent / "splits"
DEFAULT_OUT = Path(__file__).resolve().parent / "camvid"
SHOWN_NAMES = 10  # file names listed in an error before "..."

# Class of each index in the SegNet release's labels.
SEGNET_ORDER = (
    "Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist", "Void",
)

Task = Callable[[], int]  # one file's work; returns how many of its pixels had no class (now Void)


def read_split(path: Path) -> list[str]:
    """Image file names of one subset; SegNet's `image label` path lines are accepted too."""
    if not path.is_file():
        raise SystemExit(f"prepare_camvid: split list {path} not found; give --splits the folder "
                         f"holding {', '.join(s + '.txt' for s in SUBSETS)}.")
    lines = path.read_text().splitlines()
    return [Path(line.split()[0]).name for line in lines if line.strip()]


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
    """Count and the first names: enough to find the problem without flooding the terminal."""
    shown = ", ".join(names[:SHOWN_NAMES])
    return f"{len(names)} ({shown}{', ...' if len(names) > SHOWN_NAMES else ''})"


def check_names(expected: Iterable[str], found: Iterable[str], where: Path, what: str) -> None:
    """Stop with the missing and extra names when a folder does not hold exactly the split."""
    expected, found = set(expected), set(found)
    missing, extra = sorted(expected - found), sorted(found - expected)
    if not missing and not extra:
        return
    problems = []
    if missing:
        problems.append(f"missing {what} {_listing(missing)}")
    if extra:
        problems.append(f"extra {what} not in the split lists {_listing(extra)}")
    raise SystemExit(f"prepare_camvid: {where} has {len(found)} {what}, the split lists expect "
                     f"{len(expected)}: {'; '.join(problems)}. Use the complete CamVid release, "
                     f"or give --splits lists that match the folder.")


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


def segnet_table() -> np.ndarray:
    """SegNet index -> thesis index for every byte value; anything past Void becomes Void."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for segnet_index, name in enumerate(SEGNET_ORDER):
        table[segnet_index] = class_index(name)
    return table


def remap_segnet_label(src: Path, dst: Path, table: np.ndarray) -> int:
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
    write_png(dst, table[label])
    return int(np.count_nonzero(label >= len(SEGNET_ORDER)))


def official_tasks(images: Path, labels: Path, out: Path,
                   splits: dict[str, list[str]]) -> dict[Path, Task]:
    """Work for the official download: every split name needs an image and an `_L` mask."""
    image_files = index_folder(images)
    label_files = pair_labels(labels)
    wanted = [name for names in splits.values() for name in names]
    check_names(wanted, image_files, images, "images")
    check_names(wanted, label_files, labels, "labels (shown by image name)")
    tasks: dict[Path, Task] = {}
    for subset, names in splits.items():
        for name in names:
            tasks[image_files[name]] = partial(copy_image, image_files[name], out / subset / name)
            tasks[label_files[name]] = partial(convert_file, label_files[name],
                                               out / f"{subset}_labels" / name)
    return tasks


def segnet_tasks(segnet: Path, out: Path, splits: dict[str, list[str]]) -> dict[Path, Task]:
    """Work for the SegNet release, whose folders `<subset>` and `<subset>annot` hold one subset."""
    table = segnet_table()
    tasks: dict[Path, Task] = {}
    for subset, names in splits.items():
        image_files = index_folder(segnet / subset)
        label_files = index_folder(segnet / f"{subset}annot")
        check_names(names, image_files, segnet / subset, "images")
        check_names(names, label_files, segnet / f"{subset}annot", "labels")
        for name in names:
            tasks[image_files[name]] = partial(copy_image, image_files[name], out / subset / name)
            tasks[label_files[name]] = partial(remap_segnet_label, label_files[name],
                                               out / f"{subset}_labels" / name, table)
    return tasks


def run_tasks(tasks: dict[Path, Task], workers: int) -> dict[Path, int]:
    """Run the per-file work on threads (PIL and zlib release the GIL); source -> Void count."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda task: task(), tasks.values())
        results = list(tqdm(results, total=len(tasks), desc="camvid", unit="file"))
    return dict(zip(tasks, results))


def summary_line(splits: dict[str, list[str]], out: Path, counts: dict[Path, int]) -> str:
    """The run's one line on stdout; the per-file details went to stderr."""
    sizes = ", ".join(f"{subset} {len(names)}" for subset, names in splits.items())
    bad = sum(1 for count in counts.values() if count)
    return (f"prepared {sizes} image/label pairs in {out}; {bad} labels had pixels outside the "
            f"classes ({sum(counts.values())} pixels mapped to Void)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="official download: folder of the 701 images")
    parser.add_argument("--labels", type=Path, help="official download: folder of the _L.png masks")
    parser.add_argument("--segnet", type=Path,
                        help="SegNet release folder (train, trainannot, val, valannot, test, testannot)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="thesis layout (default data/camvid)")
    parser.add_argument("--splits", type=Path, default=DEFAULT_SPLITS,
                        help="folder with train.txt, val.txt, test.txt (default data/splits)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="threads")
    args = parser.parse_args(argv)
    official = args.images is not None or args.labels is not None
    if official == (args.segnet is not None):
        parser.error("give either --images and --labels (official download) or --segnet")
    if official and (args.images is None or args.labels is None):
        parser.error("the official download needs both --images and --labels")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    splits = load_splits(args.splits)
    # Everything is written beside OUT first and moved in at the end: a file that cannot be read stops the
    # run with OUT as it was, not half replaced.
    staging = args.out.parent / f".{args.out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if args.segnet is not None:
            tasks = segnet_tasks(args.segnet, staging, splits)
        else:
            tasks = official_tasks(args.images, args.labels, staging, splits)
        counts = run_tasks(tasks, args.workers)
        for path in sorted(staging.rglob("*.png")):
            target = args.out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report_unknown(counts)
    print(summary_line(splits, args.out, counts))


if __name__ == "__main__":
    main()
