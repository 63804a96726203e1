"""CamVid: its class table, colours and statistics, the thesis layout decoded once into uint8
tensors, and the split protocol of semi-supervised segmentation.

    DATA_ROOT/{train,val,test}/NAME.png        RGB images (PNG or JPEG)
    DATA_ROOT/{train,val,test}_labels/NAME.png single-channel class indices (0..10, 11 = Void)
    DATA_ROOT/unlabeled/train/NAME.png         unlabeled video frames

Every image is decoded a single time, in parallel threads (PIL releases the GIL while decoding),
resized by `scale` and stacked into one (N,3,H,W) uint8 tensor; training batches are then made by
indexing, on the CPU or on the GPU. Bad input is reported here, with the file name and the fix,
before any training starts.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError

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
LEGEND = tuple(zip((*CLASS_NAMES, "Void"), COLOURS))  # what pictures name each colour

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The statistics the model normalises with, RGB in [0, 255]. "camvid" describes the data (the 367
# train images of the SegNet release, 480x360), as SwiftNet's reference normalises with its data
# set's own statistics also from ImageNet weights; "thesis" keeps the thesis's values, which fit no
# CamVid split, for exact reproduction.
STATISTICS = {
    "camvid": ((105.03, 108.41, 110.33), (78.30, 79.46, 78.34)),
    "thesis": ((111.376, 63.110, 83.670), (41.608, 54.237, 68.889)),
}


@dataclass
class SegmentationSet:
    """Images (N,3,H,W) uint8, labels (N,H,W) uint8 or None for unlabeled frames, and file stems.

    `source_size` is (width, height) of the files on disk, before IMAGE_SCALE: pseudo-labels are
    written at that size, like the ground truth.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    source_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: Sequence[int]) -> "SegmentationSet":
        index = torch.as_tensor(list(indices), dtype=torch.long)
        labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
        return SegmentationSet(self.images[index.to(self.images.device)], labels, [self.names[i] for i in index],
                               self.source_size)

    def to(self, device: torch.device | str) -> "SegmentationSet":
        labels = None if self.labels is None else self.labels.to(device)
        return SegmentationSet(self.images.to(device), labels, self.names, self.source_size)

    def pin_memory(self) -> "SegmentationSet":
        """Page-locked host memory: batches then reach the GPU by asynchronous copies."""
        labels = None if self.labels is None else self.labels.pin_memory()
        return SegmentationSet(self.images.pin_memory(), labels, self.names, self.source_size)


def image_files(folder: Path) -> list[Path]:
    """The images of a folder, sorted by name; a missing or empty folder is an error."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist. Put CamVid in the thesis layout there "
                        "(see README, 'Preparing CamVid'), or try the synthetic demo with --demo.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{folder} holds no images (.png/.jpg). Check DATA_ROOT, or prepare CamVid first "
                        "(README, 'Preparing CamVid').")
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:  # labels and pseudo-labels are named by the stem: two images would share one
            raise UserError(f"{by_stem[path.stem].name} and {path.name} in {folder} have the same name before the "
                            "extension: keep one of them, or rename the other.")
        by_stem[path.stem] = path
    return files


def paired_files(root: Path, subset: str) -> tuple[list[Path], list[Path]]:
    """Images of `subset` and their labels, paired by file stem; an unpaired file is an error."""
    images = image_files(root / subset)
    label_dir = root / f"{subset}_labels"
    labels = image_files(label_dir)
    by_stem = {p.stem: p for p in labels}
    lonely_images = [p for p in images if p.stem not in by_stem]
    if lonely_images:
        raise UserError(f"{lonely_images[0]} has no label in {label_dir} ({len(lonely_images)} images without "
                        "labels). Every image needs an index mask of the same name; "
                        "create them with data/mask_maker.py.")
    image_stems = {p.stem for p in images}
    lonely_labels = [p for p in labels if p.stem not in image_stems]
    if lonely_labels:
        raise UserError(f"{lonely_labels[0]} has no image in {root / subset} ({len(lonely_labels)} labels without "
                        "images). Remove it or add the image.")
    return images, [by_stem[p.stem] for p in images]


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{path} cannot be read ({error}). The file is damaged or truncated: "
                        "copy or export it again.") from error


def decode_image(path: Path, scale: float) -> np.ndarray:
    image = _open(path).convert("RGB")
    if scale != 1:
        image = image.resize(scaled_size(image.size, scale), Image.BILINEAR)
    return np.asarray(image)


def decode_label(path: Path, scale: float, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """A class-index mask; colour masks, out-of-range values and size mismatches are errors."""
    label = _open(path)
    if label.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{path} is a {label.mode} image, but labels must be single-channel class indices. "
                        "If it is a coloured CamVid mask, convert it with: python data/mask_maker.py "
                        f"--src {path.parent} --out {path.parent}_index")
    if image_size is not None and label.size != image_size:
        raise UserError(f"{path} is {label.size[0]}x{label.size[1]} but its image is "
                        f"{image_size[0]}x{image_size[1]}: a label must have its image's size.")
    array = np.asarray(label)
    if array.max(initial=0) > IGNORE_INDEX:
        raise UserError(f"{path} holds class index {int(array.max())}, but valid values are 0..{IGNORE_INDEX} "
                        f"({IGNORE_INDEX} = Void). Is it in another class order (SegNet?) or a raw CamVid mask? "
                        "Convert it with data/prepare_camvid.py or data/mask_maker.py.")
    if scale != 1:
        resized = Image.fromarray(array.astype(np.uint8)).resize(scaled_size(label.size, scale), Image.NEAREST)
        array = np.asarray(resized)
    return array.astype(np.uint8)


def _decode_all(decode: Callable[[Path], np.ndarray], paths: Sequence[Path]) -> list[np.ndarray]:
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(decode, paths))


def _stack(arrays: list[np.ndarray], paths: Sequence[Path]) -> np.ndarray:
    shape = arrays[0].shape
    for array, path in zip(arrays, paths):
        if array.shape != shape:
            raise UserError(f"{path} is {array.shape[1]}x{array.shape[0]} but {paths[0].name} is "
                            f"{shape[1]}x{shape[0]}: all images of a set must have one size. Resize them first.")
    return np.stack(arrays)


def load_images(paths: Sequence[Path], scale: float = 1.0) -> torch.Tensor:
    arrays = _decode_all(lambda p: decode_image(p, scale), paths)
    return torch.from_numpy(_stack(arrays, paths)).permute(0, 3, 1, 2).contiguous()


def image_size(path: Path) -> tuple[int, int]:
    """Reads only the header: the pixels are decoded (and checked) by `load_images`."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error}): copy or export it again.") from error


def load_labels(paths: Sequence[Path], scale: float = 1.0, image_paths: Sequence[Path] | None = None) -> torch.Tensor:
    sizes = [None] * len(paths) if image_paths is None else _decode_all(image_size, image_paths)
    arrays = _decode_all(lambda ps: decode_label(ps[0], scale, ps[1]), list(zip(paths, sizes)))
    return torch.from_numpy(_stack(arrays, paths))


def load_split(root: str | Path, subset: str, scale: float = 1.0) -> SegmentationSet:
    """One labeled subset ('train', 'val', 'test') of the thesis layout."""
    image_paths, label_paths = paired_files(Path(root), subset)
    images = load_images(image_paths, scale)
    labels = load_labels(label_paths, scale, image_paths)
    return SegmentationSet(images, labels, [p.stem for p in image_paths], image_size(image_paths[0]))


def load_unlabeled(folder: str | Path, scale: float = 1.0, limit: int = 0) -> SegmentationSet:
    """Unlabeled frames; `limit` > 0 keeps the first `limit` (sorted by name) for quick runs."""
    folder = Path(folder)
    if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        state = "holds no images (.png/.jpg)" if folder.is_dir() else "does not exist"
        raise UserError(f"{folder} {state}, but NO_ITER >= 1 with LABELED_FRACTION = 1 pseudo-labels the unlabeled "
                        f"frames there. Extract them with: python data/extract_frames.py VIDEO --out {folder} "
                        "(README, 'Preparing CamVid'); or use the split protocol (--labeled_fraction=1/8), or train "
                        "the teacher alone (--no_iter=0).")
    paths = image_files(folder)
    if limit > 0:
        paths = paths[:limit]
    return SegmentationSet(load_images(paths, scale), None, [p.stem for p in paths], image_size(paths[0]))


def split_names(names: list[str], fraction: float, seed: int,
                by_sequence: bool = False) -> tuple[list[str], list[str]]:
    """The split protocol: a seeded `fraction` of the train images keeps its labels, the rest does not.

    `by_sequence` draws the labeled images from every video sequence in proportion to its share of
    train. CamVid's train images come from three sequences, one of which (0016E5) is also the whole
    val split; a plain draw of 23 images can take 18 of them from it, and val then rewards the
    models that fit that sequence.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"LABELED_FRACTION={fraction} must be in (0, 1], e.g. 1/8.")
    count = max(1, round(fraction * len(names)))
    generator = torch.Generator().manual_seed(seed)
    if by_sequence:
        chosen = _stratified_choice([sequence_of(name) for name in names], count, generator)
    else:
        chosen = set(torch.randperm(len(names), generator=generator)[:count].tolist())
    labeled = sorted(name for i, name in enumerate(names) if i in chosen)
    unlabeled = sorted(name for i, name in enumerate(names) if i not in chosen)
    return labeled, unlabeled


def sequence_of(name: str) -> str:
    """The video sequence of a CamVid file name: 0016E5_07959.png comes from 0016E5."""
    return name.split("_", 1)[0]


def _stratified_choice(groups: list[str], count: int, generator: torch.Generator) -> set[int]:
    """`count` indices, each group given its proportional quota (largest remainders take the seats
    left over, ties in random order), its members drawn at random."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    keys = sorted(members)
    exact = [count * len(members[key]) / len(groups) for key in keys]
    quotas = [int(share) for share in exact]
    tie_order = torch.randperm(len(keys), generator=generator).tolist()
    by_remainder = sorted(range(len(keys)), key=lambda k: (quotas[k] - exact[k], tie_order[k]))
    for k in by_remainder[: count - sum(quotas)]:
        quotas[k] += 1
    chosen: set[int] = set()
    for key, quota in zip(keys, quotas):
        order = torch.randperm(len(members[key]), generator=generator)[:quota].tolist()
        chosen.update(members[key][i] for i in order)
    return chosen


def read_split_file(path: str | Path, names: list[str]) -> tuple[list[str], list[str]]:
    try:
        split = json.loads(Path(path).read_text())
        labeled, unlabeled = list(split["labeled"]), list(split["unlabeled"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"SPLIT_FILE={path} cannot be read ({error}); it must be JSON with 'labeled' and "
                        "'unlabeled' lists of file names, like the split.json of a run directory.") from error
    if not labeled:
        raise UserError(f"SPLIT_FILE={path} lists no labeled images: the teacher needs some.")
    unknown = sorted(set(labeled + unlabeled) - set(names))
    if unknown or set(labeled) & set(unlabeled):
        raise UserError(f"SPLIT_FILE={path} does not fit the train images: unknown names {unknown[:3]}, "
                        f"{len(set(labeled) & set(unlabeled))} names both labeled and unlabeled.")
    return labeled, unlabeled
