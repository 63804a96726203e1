"""What every segmentation data set shares: its class table, the split protocol of semi-supervised segmentation,
and images and labels decoded once, in threads (PIL releases the GIL), into uint8 tensors that batches index on the
CPU or GPU. Labels become class indices 0..C-1 (C: ignore) through each data set's lookup of its file values. Bad
input is reported here, with the file and the fix, before training starts.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

try:
    import fcntl
except ImportError:  # Windows: no lock; give each process its own DATA_CACHE
    fcntl = None

from utils.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INVALID = 255  # in a label lookup: a file value that is an error, not a class


@dataclass(frozen=True)
class ClassTable:
    """What a model of a data set needs besides images: class names, the colours of the classes and
    of ignore (pictures, colour masks), and the RGB statistics in [0, 255] the model normalises with."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]  # one per class, then ignore's
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ignore_name: str = "ignore"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    ignore_index = num_classes  # ignore is the index after the classes

    @property
    def legend(self) -> tuple[tuple[str, tuple[int, int, int]], ...]:
        return tuple(zip((*self.names, self.ignore_name), self.colours))


def index_lookup(num_classes: int, ignore_values: Sequence[int] = ()) -> np.ndarray:
    """File value → class index for labels stored as indices: 0..C-1 stay, C and `ignore_values` become
    ignore (C), everything else is INVALID."""
    lookup = np.full(256, INVALID, dtype=np.uint8)
    lookup[: num_classes] = np.arange(num_classes)
    lookup[[num_classes, *ignore_values]] = num_classes
    return lookup


@dataclass
class SegmentationSet:
    """Images (N,3,H,W) uint8, labels (N,H,W) uint8 or None for unlabeled frames, and file stems.
    `source_size` is (width, height) on disk, before IMAGE_SCALE: pseudo-labels are written at that size."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    source_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.names)

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor],
              names: list[str] | None = None) -> "SegmentationSet":
        """`function` of the images and labels (to a device, into pinned memory, a selection), with `names`."""
        labels = None if self.labels is None else function(self.labels)
        return SegmentationSet(function(self.images), labels, self.names if names is None else names, self.source_size)

    def subset(self, indices: Sequence[int]) -> "SegmentationSet":
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return self.apply(lambda tensor: tensor[index.to(tensor.device)], [self.names[i] for i in index])

    def named(self, names: Sequence[str]) -> "SegmentationSet":
        position = {name: i for i, name in enumerate(self.names)}
        return self.subset([position[name] for name in names])


def image_files(folder: Path, hint: str = "Check DATA_ROOT, or try the synthetic demo with --demo.") -> list[Path]:
    """The images of a folder, sorted by name; a missing or empty folder is an error, `hint` says what to do."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist. {hint}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"{folder} holds no images (.png/.jpg). {hint}")
    by_stem: dict[str, Path] = {}
    for path in files:
        if path.stem in by_stem:  # labels and pseudo-labels are named by the stem: two images would share one
            raise UserError(f"{by_stem[path.stem].name} and {path.name} in {folder} have the same name before the "
                            "extension: keep one of them, or rename the other.")
        by_stem[path.stem] = path
    return files


def paired_files(image_dir: Path, label_dir: Path, hint: str) -> tuple[list[Path], list[Path]]:
    """The images of a folder and their labels, paired by file stem; an unpaired file is an error."""
    images = image_files(image_dir, hint)
    labels = image_files(label_dir, hint)
    by_stem = {p.stem: p for p in labels}
    lonely_images = [p for p in images if p.stem not in by_stem]
    if lonely_images:
        raise UserError(f"{lonely_images[0]} has no label in {label_dir} ({len(lonely_images)} images without "
                        "labels). Every image needs an index mask of the same name; data/mask_maker.py makes "
                        "them from colour masks.")
    paired = [by_stem.pop(p.stem) for p in images]
    if by_stem:  # the labels left over
        raise UserError(f"{next(iter(by_stem.values()))} has no image in {image_dir} ({len(by_stem)} labels without "
                        "images). Remove it or add the image.")
    return images, paired


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


def decode_label(path: Path, scale: float, lookup: np.ndarray, image_size: tuple[int, int] | None = None,
                 hint: str = "") -> np.ndarray:
    """Class indices through `lookup`; colour masks, INVALID values and size mismatches are errors."""
    label = _open(path)
    if label.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"{path} is a {label.mode} image, but labels must be single-channel class indices. "
                        "If it is a coloured CamVid mask, convert it with: python data/mask_maker.py "
                        f"--src {path.parent} --out {path.parent}_index")
    if image_size is not None and label.size != image_size:
        raise UserError(f"{path} is {label.size[0]}x{label.size[1]} but its image is "
                        f"{image_size[0]}x{image_size[1]}: a label must have its image's size.")
    array = np.asarray(label)
    invalid = array > 255 if array.max(initial=0) > 255 else lookup[array] == INVALID
    if invalid.any():
        raise UserError(f"{path} holds the value {int(array[invalid][0])}, but its valid values are "
                        f"{_ranges(np.flatnonzero(lookup != INVALID))}. {hint}".rstrip())
    array = lookup[array]
    if scale != 1:
        array = np.asarray(Image.fromarray(array).resize(scaled_size(label.size, scale), Image.NEAREST))
    return array


def _ranges(values: np.ndarray) -> str:
    """0 1 2 3 255 → '0..3, 255'."""
    runs: list[list[int]] = []
    for value in values.tolist():
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def _in_threads(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def _decode_into(decode: Callable[[int], np.ndarray], paths: Sequence[Path], channels_first: bool,
                 cache: Path | None, recipe: str) -> torch.Tensor:
    """decode(i) of every path, in threads, straight into one tensor, so the set is held once, not twice
    (2,975 Cityscapes images are 18.7 GB). With a `cache` folder the tensor is a memory-mapped file there,
    decoded once and paged in as batches ask, so a set larger than the memory trains too; its name hashes
    the files, their sizes and modification times, and the `recipe` that decodes them."""
    first = decode(0)
    size = first.shape
    shape = (len(paths), size[2], *size[:2]) if channels_first else (len(paths), *size)

    def fill(slots: np.ndarray) -> None:
        def put(i: int) -> None:
            array = first if i == 0 else decode(i)
            if array.shape != size:
                raise UserError(f"{paths[i]} is {array.shape[1]}x{array.shape[0]} but {paths[0].name} is "
                                f"{size[1]}x{size[0]}: all images of a set must have one size. Resize them first.")
            slots[i] = array.transpose(2, 0, 1) if channels_first else array

        _in_threads(put, range(len(paths)))

    if cache is None:
        out = torch.empty(shape, dtype=torch.uint8)
        fill(out.numpy())
        return out
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha1(json.dumps([recipe, shape, stats]).encode()).hexdigest()[:16]
    path = cache / f"{key}.uint8"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{key}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process decoding the same set (torchrun): wait for it
        if not (path.is_file() and path.stat().st_size == math.prod(shape)):
            partial = path.with_suffix(".partial")  # a killed decode's leftover is overwritten
            slots = np.memmap(partial, np.uint8, "w+", shape=shape)
            fill(slots)
            slots.flush()
            del slots
            os.replace(partial, path)
    return torch.from_numpy(np.memmap(path, np.uint8, "c", shape=shape))  # copy-on-write: never written back


def load_images(paths: Sequence[Path], scale: float = 1.0, cache: Path | None = None) -> torch.Tensor:
    return _decode_into(lambda i: decode_image(paths[i], scale), paths, True, cache, f"images {scale}")


def image_size(path: Path) -> tuple[int, int]:
    """Reads only the header: the pixels are decoded (and checked) by `load_images`."""
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error}): copy or export it again.") from error


def load_labels(paths: Sequence[Path], lookup: np.ndarray, scale: float = 1.0,
                image_paths: Sequence[Path] | None = None, hint: str = "", cache: Path | None = None) -> torch.Tensor:
    sizes = [None] * len(paths) if image_paths is None else _in_threads(image_size, image_paths)
    return _decode_into(lambda i: decode_label(paths[i], scale, lookup, sizes[i], hint), paths, False, cache,
                        f"labels {scale} {lookup.tobytes().hex()}")


def load_labeled(image_paths: Sequence[Path], label_paths: Sequence[Path], lookup: np.ndarray, scale: float,
                 hint: str = "", names: Sequence[str] | None = None, cache: Path | None = None) -> SegmentationSet:
    """Images and their labels; named by `names`, or by the images' file stems."""
    images = load_images(image_paths, scale, cache)
    labels = load_labels(label_paths, lookup, scale, image_paths, hint, cache)
    return SegmentationSet(images, labels, list(names or [p.stem for p in image_paths]), image_size(image_paths[0]))


def load_unlabeled_folder(folder: Path, hint: str, scale: float, limit: int = 0,
                          cache: Path | None = None) -> SegmentationSet:
    """The images of `folder`, without labels; `limit` > 0 keeps the first `limit` (sorted by name) for quick runs."""
    paths = image_files(folder, hint)[: limit if limit > 0 else None]
    return SegmentationSet(load_images(paths, scale, cache), None, [p.stem for p in paths], image_size(paths[0]))


def split_names(names: list[str], fraction: float, seed: int, by_sequence: bool = False) -> tuple[list[str], list[str]]:
    """The split protocol: a seeded `fraction` of the train images keeps its labels, the rest does not.
    `by_sequence` draws from every group (`sequence_of`) in proportion to its share of train: CamVid's train
    images come from three sequences, one of which (0016E5) is also all of val; a plain draw of 23 images can
    take 18 from it, and val then rewards the models that fit that sequence."""
    if not 0 < fraction <= 1:
        raise UserError(f"LABELED_FRACTION={fraction} must be in (0, 1], e.g. 1/8.")
    count = max(1, round(fraction * len(names)))
    generator = torch.Generator().manual_seed(seed)
    if by_sequence:
        chosen = _stratified_choice([sequence_of(name) for name in names], count, generator)
    else:
        chosen = set(torch.randperm(len(names), generator=generator)[:count].tolist())
    return (sorted(name for i, name in enumerate(names) if i in chosen),
            sorted(name for i, name in enumerate(names) if i not in chosen))


def sequence_of(name: str) -> str:
    """The group of a file name, before the first '_': CamVid's video sequence (0016E5_07959 comes from
    0016E5), Cityscapes' city (aachen_000000_000019)."""
    return name.split("_", 1)[0]


def _stratified_choice(groups: list[str], count: int, generator: torch.Generator) -> set[int]:
    """`count` indices, each group given its proportional quota (largest remainders take the seats
    left over, ties in random order), its members drawn at random."""
    keys = sorted(set(groups))
    members = {key: [index for index, group in enumerate(groups) if group == key] for key in keys}
    exact = [count * len(members[key]) / len(groups) for key in keys]
    quotas = [int(share) for share in exact]
    tie_order = torch.randperm(len(keys), generator=generator).tolist()
    by_remainder = sorted(range(len(keys)), key=lambda k: (quotas[k] - exact[k], tie_order[k]))
    for k in by_remainder[: count - sum(quotas)]:
        quotas[k] += 1
    return {members[key][i] for key, quota in zip(keys, quotas)
            for i in torch.randperm(len(members[key]), generator=generator)[:quota].tolist()}


def read_split_file(path: str | Path, names: list[str]) -> tuple[list[str], list[str]]:
    """A run's split.json ('labeled' and 'unlabeled' lists), or a text file of labeled names, one per line
    (a published split such as data/splits/cityscapes/unimatch/1_8.txt) whose unlabeled images are the rest.
    A line's folders are dropped: `aachen/aachen_000000_000019` names `aachen_000000_000019`."""
    try:
        text = Path(path).read_text()
        if Path(path).suffix == ".txt":
            labeled = [Path(line.split()[0]).name for line in text.splitlines() if line.strip()]
            unlabeled = [name for name in names if name not in set(labeled)]
        else:
            split = json.loads(text)
            labeled, unlabeled = list(split["labeled"]), list(split["unlabeled"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"SPLIT_FILE={path} cannot be read ({error}); it must be JSON with 'labeled' and "
                        "'unlabeled' lists of file names, like the split.json of a run directory, or a .txt "
                        "list of labeled names.") from error
    if not labeled:
        raise UserError(f"SPLIT_FILE={path} lists no labeled images: the teacher needs some.")
    unknown = sorted(set(labeled + unlabeled) - set(names))
    if unknown or set(labeled) & set(unlabeled):
        raise UserError(f"SPLIT_FILE={path} does not fit the train images: unknown names {unknown[:3]}, "
                        f"{len(set(labeled) & set(unlabeled))} names both labeled and unlabeled.")
    return labeled, unlabeled
