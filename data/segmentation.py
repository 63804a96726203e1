"""What every segmentation data set shares: its class table, the split protocol of semi-supervised segmentation,
and images and labels decoded once, in threads (PIL releases the GIL), into uint8 tensors that batches index on the
CPU or GPU. Labels become class indices 0..C-1 (C: ignore) through each data set's lookup of its file values. Bad
input is reported here, with the file and the fix, before training starts.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no lock; give each process its own DATA_CACHE
    fcntl = None

from utils.errors import UserError
from utils.io import read_json, write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INVALID = 255  # in a label lookup: a file value that is an error, not a class
IMAGENET = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))  # RGB mean and std in [0, 255]


def voc_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """PASCAL VOC's colour map: distinct colours spread over the bits of the index."""
    colours = []
    for index in range(count):
        rgb, code = [0, 0, 0], index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        colours.append(tuple(rgb))
    return tuple(colours)


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
    """File value → class index for labels stored as indices: 0..C-1 stay, `ignore_values` (C where none are
    given: CamVid's Void, the pseudo-labels' ignore) become ignore (C), everything else is INVALID."""
    lookup = np.full(256, INVALID, dtype=np.uint8)
    lookup[: num_classes] = np.arange(num_classes)
    lookup[list(ignore_values) or [num_classes]] = num_classes
    return lookup


@dataclass
class SegmentationSet:
    """Images, their labels (class indices; None for unlabeled frames) and file stems, decoded once into uint8
    storage that batches index on the CPU or GPU. A set whose images share one size holds them as one (N,3,H,W)
    and one (N,H,W) tensor, as batches take them; a set of mixed sizes holds every image's pixels one after
    another (channels first) in one flat buffer, and `sizes` says where each ends. `sizes` are (height, width) as
    stored, after IMAGE_SCALE; `source_sizes` (width, height) on disk: pseudo-labels are written at those."""

    images: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]
    sizes: torch.Tensor  # (N, 2) int64, on the CPU
    source_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def one_size(self) -> bool:
        return self.images.ndim == 4

    @functools.cached_property
    def _starts(self) -> list[int]:
        """The pixels before each image in a flat buffer, and after the last."""
        return [0, *self.sizes.prod(1).cumsum(0).tolist()]

    def _span(self, i: int, channels: int) -> tuple[int, int]:
        """Where image i starts in a flat buffer of `channels` values per pixel, and how many values it has."""
        return self._starts[i] * channels, (self._starts[i + 1] - self._starts[i]) * channels

    def image(self, i: int) -> torch.Tensor:
        if self.one_size:
            return self.images[i]
        start, count = self._span(i, 3)
        return self.images[start : start + count].view(3, *self.sizes[i].tolist())

    def label(self, i: int) -> torch.Tensor:
        if self.one_size:
            return self.labels[i]
        start, count = self._span(i, 1)
        return self.labels[start : start + count].view(*self.sizes[i].tolist())

    def gather(self, index: torch.Tensor, fill: Sequence[float],
               ignore_index: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The indexed images and labels as one batch, with each image's size. A set of one size is indexed as
        it is (sizes None); mixed sizes are padded at the bottom and right to the largest, images with the colour
        `fill` and labels with `ignore_index`."""
        if self.one_size:
            images = self.images[index.to(self.images.device)]
            labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
            return images, labels, None
        index_list = index.tolist()
        sizes = self.sizes[index_list]
        height, width = sizes.max(0).values.tolist()
        device = self.images.device
        images = torch.tensor(fill, device=device).round().to(torch.uint8).view(1, 3, 1, 1).repeat(
            len(index_list), 1, height, width)
        labels = None if self.labels is None else torch.full((len(index_list), height, width), ignore_index,
                                                             dtype=torch.uint8, device=self.labels.device)
        for k, i in enumerate(index_list):
            h, w = sizes[k].tolist()
            images[k, :, :h, :w] = self.image(i)
            if labels is not None:
                labels[k, :h, :w] = self.label(i)
        return images, labels, sizes

    def groups(self, batch_size: int, indices: Sequence[int] | None = None) -> list[list[int]]:
        """`indices` (all by default) in batches of images of one size (stored and on disk), at most `batch_size`
        each: consecutive runs in a set of one size, in the order each size first appears otherwise."""
        indices = list(range(len(self))) if indices is None else list(indices)
        by_size: dict[tuple, list[int]] = {}
        for i in indices:
            by_size.setdefault((*self.sizes[i].tolist(), *self.source_sizes[i]), []).append(i)
        return [members[start : start + batch_size] for members in by_size.values()
                for start in range(0, len(members), batch_size)]

    def stack(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The images (and labels) of `indices`, all of one size, as one batch: a view where they are consecutive
        in a set of one size."""
        indices = list(indices)
        if self.one_size and indices == list(range(indices[0], indices[0] + len(indices))):
            part = slice(indices[0], indices[-1] + 1)
            return self.images[part], None if self.labels is None else self.labels[part]
        images = torch.stack([self.image(i) for i in indices])
        return images, None if self.labels is None else torch.stack([self.label(i) for i in indices])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every image and label, in batches of one size: what evaluation takes."""
        return (self.stack(group) for group in self.groups(batch_size))

    def apply(self, function: Callable[[torch.Tensor], torch.Tensor]) -> "SegmentationSet":
        """`function` of the images and labels: to a device, into pinned memory."""
        labels = None if self.labels is None else function(self.labels)
        return SegmentationSet(function(self.images), labels, self.names, self.sizes, self.source_sizes)

    def subset(self, indices: Sequence[int]) -> "SegmentationSet":
        """A copy of the images `indices`, of one size where they are."""
        indices = list(indices)
        sizes = self.sizes[indices] if indices else self.sizes[:0]
        names, source_sizes = [self.names[i] for i in indices], [self.source_sizes[i] for i in indices]
        if self.one_size:
            index = torch.as_tensor(indices, dtype=torch.long)
            labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
            return SegmentationSet(self.images[index.to(self.images.device)], labels, names, sizes, source_sizes)
        if indices and (sizes == sizes[0]).all():
            images, labels = self.stack(indices)
        else:
            images = torch.cat([self.image(i).reshape(-1) for i in indices]) if indices else self.images[:0]
            labels = None if self.labels is None else (
                torch.cat([self.label(i).reshape(-1) for i in indices]) if indices else self.labels[:0])
        return SegmentationSet(images, labels, names, sizes, source_sizes)

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


def scaled_size(size: tuple[int, int], scale: float, max_side: int = 0) -> tuple[int, int]:
    """(width, height) at `scale`, shrunk further where the longer side would exceed `max_side` (0: no cap)."""
    if max_side and max(size) * scale > max_side:
        scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _too_large(path: Path, error: Exception) -> UserError:
    return UserError(f"{path} is larger than Pillow decodes without suspecting a decompression bomb ({error}). "
                     "Shrink or tile it first.")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except Image.DecompressionBombError as error:
        raise _too_large(path, error) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UserError(f"{path} cannot be read ({error}). The file is damaged or truncated: "
                        "copy or export it again.") from error


def _rgb(image: Image.Image) -> Image.Image:
    """RGB of 8 bits per channel; 16-bit grey scaled down, not cut at 255 as Pillow's conversion would."""
    if image.mode.startswith("I"):
        array = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def decode_image(path: Path, scale: float, max_side: int = 0) -> np.ndarray:
    image = _rgb(_open(path))
    size = scaled_size(image.size, scale, max_side)
    if scale != 1 or size != image.size:
        image = image.resize(size, Image.BILINEAR)
    return np.asarray(image)


def decode_label(path: Path, scale: float, lookup: np.ndarray, image_size: tuple[int, int] | None = None,
                 hint: str = "", max_side: int = 0) -> np.ndarray:
    """Class indices through `lookup`; colour masks, INVALID values and size mismatches are errors."""
    label = _open(path)
    if label.format == "JPEG" or path.suffix.lower() in (".jpg", ".jpeg"):
        raise UserError(f"{path} is a JPEG: its compression changes class indices at every edge. Labels must be "
                        "lossless: save them as PNG.")
    if label.mode == "1":
        raise UserError(f"{path} is a 1-bit (black and white) image: labels must be class indices of 8 bits. Save it "
                        "as an 8-bit grayscale PNG whose values are the classes.")
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
    size = scaled_size(label.size, scale, max_side)
    if scale != 1 or size != label.size:
        array = np.asarray(Image.fromarray(array).resize(size, Image.NEAREST))
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


def _decode_into(decode: Callable[[int], np.ndarray], paths: Sequence[Path], sizes: Sequence[tuple[int, int]],
                 channels: int, cache: Path | None, recipe: str) -> torch.Tensor:
    """decode(i) of every path, in threads, straight into one buffer, so the set is held once, not twice
    (2,975 Cityscapes images are 18.7 GB): images of `sizes` (width, height) one after another, channels first;
    returned as one (N,C,H,W) or (N,H,W) tensor when they share a size. With a `cache` folder the buffer is a
    memory-mapped file there, decoded once and paged in as batches ask, so a set larger than the memory trains
    too; its name hashes the files, their sizes and modification times, and the `recipe` that decodes them."""
    counts = [channels * w * h for w, h in sizes]
    starts = np.cumsum([0, *counts])

    def fill(flat: np.ndarray) -> None:
        def put(i: int) -> None:
            array = decode(i)
            if array.shape[:2] != (sizes[i][1], sizes[i][0]):
                raise UserError(f"{paths[i]} decoded to {array.shape[1]}x{array.shape[0]}, not the "
                                f"{sizes[i][0]}x{sizes[i][1]} its header gives: copy or export it again.")
            flat[starts[i] : starts[i + 1]] = (array.transpose(2, 0, 1) if channels == 3 else array).ravel()

        _in_threads(put, range(len(paths)))

    if cache is None:
        flat_tensor = torch.empty(int(starts[-1]), dtype=torch.uint8)
        fill(flat_tensor.numpy())
    else:
        flat_tensor = torch.from_numpy(_cached(fill, int(starts[-1]), paths, cache,
                                               json.dumps([recipe, channels, list(sizes)])))
    if len(set(sizes)) == 1:
        width, height = sizes[0]
        return flat_tensor.view(len(paths), *([channels] if channels == 3 else []), height, width)
    return flat_tensor


def _checksum(buffer: np.ndarray) -> int:
    """CRC-32 of a (memory-mapped) buffer, read in pieces of 64 MB."""
    crc = 0
    for start in range(0, len(buffer), 1 << 26):
        crc = zlib.crc32(buffer[start : start + (1 << 26)], crc)
    return crc


def _cached(fill: Callable[[np.ndarray], None], size: int, paths: Sequence[Path], cache: Path,
            recipe: str) -> np.ndarray:
    """DATA_CACHE's memory-mapped copy of a decoded set: named by the `recipe` and, per source file, its path,
    size, inode and modification and change times (a file saved again changes its change time, even where its
    modification time is set back), so the sources are never read again on a warm start. The file's CRC-32, kept
    beside it, is checked before it is served; a file that fails is decoded again, with a note."""
    stats = [(str(p), s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns) for p in paths for s in [p.stat()]]
    key = hashlib.sha1(json.dumps([recipe, stats]).encode()).hexdigest()[:16]
    path, record = cache / f"{key}.uint8", cache / f"{key}.json"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{key}.lock", "w") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process decoding the same set (torchrun): wait for it
            kept = read_json(record)
            if path.is_file() and path.stat().st_size == size and isinstance(kept, dict):
                if kept.get("crc32") == _checksum(np.memmap(path, np.uint8, "r", shape=(size,))):
                    return np.memmap(path, np.uint8, "c", shape=(size,))  # copy-on-write: never written back
                tqdm.write(f"note: the cached set {path} is damaged (its checksum changed): it is decoded again.")
            partial = path.with_suffix(".partial")  # a killed decode's leftover is overwritten
            with open(partial, "wb") as f:
                f.truncate(size)
                if hasattr(os, "posix_fallocate") and size:  # a full disk fails here, not as a bus error later
                    os.posix_fallocate(f.fileno(), 0, size)
            slots = np.memmap(partial, np.uint8, "r+", shape=(size,))
            fill(slots)
            slots.flush()
            write_json(record, {"crc32": _checksum(slots), "bytes": size})
            del slots
            os.replace(partial, path)
    except OSError as error:
        raise UserError(f"DATA_CACHE={cache} cannot hold the decoded set ({error.strerror or error}; it needs "
                        f"{size / 1e9:.2f} GB): give a writable folder with room, or leave DATA_CACHE out.") from error
    return np.memmap(path, np.uint8, "c", shape=(size,))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone: the pixels are decoded (and checked) later."""
    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError as error:
        raise _too_large(path, error) from error
    except OSError as error:
        raise UserError(f"{path} cannot be read ({error}): copy or export it again.") from error


def _image_recipe(scale: float, max_side: int) -> str:
    return f"images {scale} {max_side}"


def _label_recipe(scale: float, max_side: int, lookup: np.ndarray) -> str:
    return f"labels {scale} {max_side} {lookup.tobytes().hex()}"


def load_images(paths: Sequence[Path], scale: float = 1.0, cache: Path | None = None,
                max_side: int = 0) -> torch.Tensor:
    sizes = [scaled_size(size, scale, max_side) for size in _in_threads(image_size, paths)]
    return _decode_into(lambda i: decode_image(paths[i], scale, max_side), paths, sizes, 3, cache,
                        _image_recipe(scale, max_side))


def load_labels(paths: Sequence[Path], lookup: np.ndarray, scale: float = 1.0, cache: Path | None = None,
                max_side: int = 0) -> torch.Tensor:
    """Label files without images (pseudo-labels) through `lookup`."""
    sizes = [scaled_size(size, scale, max_side) for size in _in_threads(image_size, paths)]
    return _decode_into(lambda i: decode_label(paths[i], scale, lookup, max_side=max_side), paths, sizes, 1, cache,
                        _label_recipe(scale, max_side, lookup))


def load_set(image_paths: Sequence[Path], label_paths: Sequence[Path] | None, lookup: np.ndarray | None,
             scale: float, max_side: int = 0, hint: str = "", names: Sequence[str] | None = None,
             cache: Path | None = None) -> SegmentationSet:
    """Images, and their labels where `label_paths` are given (each the size of its image), at `scale` with the
    longer side capped at `max_side`; named by `names`, or by the images' file stems."""
    sources = _in_threads(image_size, image_paths)
    stored = [scaled_size(size, scale, max_side) for size in sources]
    images = _decode_into(lambda i: decode_image(image_paths[i], scale, max_side), image_paths, stored, 3, cache,
                          _image_recipe(scale, max_side))
    labels = None if label_paths is None else _decode_into(
        lambda i: decode_label(label_paths[i], scale, lookup, sources[i], hint, max_side), label_paths, stored, 1,
        cache, _label_recipe(scale, max_side, lookup))
    sizes = torch.tensor([(h, w) for w, h in stored], dtype=torch.long).view(-1, 2)
    return SegmentationSet(images, labels, list(names or [p.stem for p in image_paths]), sizes, sources)


def load_unlabeled_folder(folder: Path, hint: str, scale: float, limit: int = 0, cache: Path | None = None,
                          max_side: int = 0) -> SegmentationSet:
    """The images of `folder`, without labels; `limit` > 0 keeps the first `limit` (sorted by name) for quick runs."""
    paths = image_files(folder, hint)[: limit if limit > 0 else None]
    return load_set(paths, None, None, scale, max_side, hint, cache=cache)


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


def read_split_file(path: str | Path, names: list[str]) -> dict[str, list[str]]:
    """A run's split.json ('labeled' and 'unlabeled' lists, and the 'val' and 'test' images it held out), or a
    text file of labeled names, one per line (a published split such as data/splits/cityscapes/unimatch/1_8.txt)
    whose unlabeled images are the rest of `names`. A line's folders are dropped: `aachen/aachen_000000_000019` names
    `aachen_000000_000019`. Every name must be one of the train images `names`, and in one list only once."""
    try:
        text = Path(path).read_text()
        if Path(path).suffix == ".txt":
            labeled = [Path(line.split()[0]).name for line in text.splitlines() if line.strip()]
            split = {"labeled": labeled, "unlabeled": [name for name in names if name not in set(labeled)]}
        else:
            recorded = json.loads(text)
            split = {key: [str(name) for name in recorded[key]] for key in ("labeled", "unlabeled", "val", "test")
                     if key in recorded or key in ("labeled", "unlabeled")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"SPLIT_FILE={path} cannot be read ({error}); it must be JSON with 'labeled' and "
                        "'unlabeled' lists of file names, like the split.json of a run directory, or a .txt "
                        "list of labeled names.") from error
    if not split["labeled"]:
        raise UserError(f"SPLIT_FILE={path} lists no labeled images: the teacher needs some.")
    seen: dict[str, str] = {}
    for key, listed in split.items():
        for name in listed:
            if name in seen:
                where = "twice" if seen[name] == key else f"as {seen[name]} and as {key}"
                raise UserError(f"SPLIT_FILE={path} lists {name} {where}: each image belongs to one set, once.")
            seen[name] = key
    unknown = sorted(set(seen) - set(names))
    if unknown:
        raise UserError(f"SPLIT_FILE={path} does not fit the train images: {len(unknown)} names are not among them, "
                        f"e.g. {unknown[:3]}. Check DATA_ROOT and --dataset.")
    return split
