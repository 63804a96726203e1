"""Generated stand-ins for CamVid and CIFAR-10 in their on-disk formats, so that the demos and the tests run
offline through the loaders real data goes through.

Each image is a pure function of (seed, split, index). Every picture has its own light and every object its own
shade, so colour alone does not give a class away. A marker written last lets a finished set be reused and an
interrupted one be made again.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import numpy as np

from data.camvid import IGNORE_INDEX
from data.cifar import CIFAR_CLASSES, CIFAR_FOLDER, META_FILE, TEST_FILE, TRAIN_FILES, read_pickle
from utils.errors import UserError
from utils.io import atomic_open, read_json, write_json, write_png

MARKER = ".complete"
VERSION = 3  # bumped whenever the drawing changes, so that sets on disk are made again
STREAMS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}
BUILDING, TREE, SKY, CAR, SIGN, ROAD, PEDESTRIAN, FENCE, POLE, SIDEWALK, BICYCLIST = range(11)
# Each class's colour in neutral light. Classes come in pairs of near colours (building and fence, road and
# pole, sidewalk and sky...), so place and shape have to tell them apart.
PALETTE = np.array([[150, 95, 75], [65, 115, 50], [150, 170, 200], [170, 45, 50], [225, 205, 60], [95, 95, 100],
                    [195, 125, 95], [135, 100, 70], [120, 120, 130], [165, 160, 150], [50, 80, 170],
                    [200, 60, 200]], np.float32)  # the last is Void's


def make_street_scenes(root: str | Path, counts: Mapping[str, int] | None = None, unlabeled: int = 24,
                       size: tuple[int, int] = (160, 120), seed: int = 0) -> Path:
    """A CamVid-layout set of street scenes under `root` (size is width, height); returns root.

    root/{split}/NAME.png (RGB), root/{split}_labels/NAME.png (class indices, Void = IGNORE_INDEX) and
    root/unlabeled/train/NAME.png (frames without labels).
    """
    counts = dict(counts or {"train": 24, "val": 8, "test": 8})
    if set(counts) - {"train", "val", "test"} or min([*counts.values(), unlabeled, seed]) < 0:
        raise ValueError(f"counts may name the splits train, val and test; counts, unlabeled and seed must be "
                         f"non-negative: got {counts}, {unlabeled}, {seed}")
    if min(size) < 32:
        raise ValueError(f"size (width, height) must be at least (32, 32), got {size}")
    root = Path(root)
    params = {"kind": "street_scenes", "version": VERSION, "counts": counts, "unlabeled": unlabeled,
              "size": list(size), "seed": seed}
    marker = read_json(root / MARKER)
    if marker == params:
        return root
    if marker is None and root.is_dir() and next((p for p in root.rglob("*") if p.is_file()), None):
        raise UserError(f"{root} holds files this generator did not write: --demo draws its scenes into DATA_ROOT, "
                        "so give it a folder of its own (the demo's default is data/demo_camvid).")
    write_json(root / MARKER, {"writing": params})  # first: an interrupted set is never taken for a finished one
    for folder in ("train", "val", "test", "train_labels", "val_labels", "test_labels", "unlabeled/train"):
        for stale in (root / folder).glob("synth_*.png"):
            stale.unlink()
    for split, count in [*counts.items(), ("unlabeled", unlabeled)]:
        for index in range(count):
            image, label = render_street_scene(size, np.random.default_rng([seed, STREAMS[split], index]))
            if split == "unlabeled":
                write_png(root / "unlabeled" / "train" / f"synth_unl_{index:04d}.png", image)
            else:
                write_png(root / split / f"synth_{split}_{index:04d}.png", image)
                write_png(root / f"{split}_labels" / f"synth_{split}_{index:04d}.png", label)
    write_json(root / MARKER, params)
    return root


# Street classes as VOC classes: cars, people and bicycles are objects, everything else background.
VOC_CLASSES = np.array([0, 0, 0, 7, 0, 0, 15, 0, 0, 0, 2, 255], np.uint8)


def voc_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """(width, height) of `count` photos spread like VOC 2012's: the longer side 500 (a few shorter), mostly
    landscape, a quarter portrait, shorter sides between 250 and 500."""
    rng = np.random.default_rng([seed, 99])
    sizes = []
    for _ in range(count):
        long = 500 if rng.random() < 0.95 else int(rng.integers(300, 500))
        short = int(np.clip(rng.normal(0.72, 0.1) * long, 0.5 * long, long))
        sizes.append((long, short) if rng.random() < 0.75 else (short, long))
    return sizes


def make_voc_tree(root: str | Path, sizes: Mapping[str, list[tuple[int, int]]], augmented: int = 0,
                  seed: int = 0) -> Path:
    """A Pascal VOC 2012 tree of street scenes under `root`: JPEGImages/NAME.jpg, SegmentationClass/NAME.png
    (palette PNGs of class indices, 255 on a two-pixel band around each object, as VOC draws boundaries),
    ImageSets/Segmentation/{train,val}.txt with the images of `sizes` (width, height) per list; and with
    `augmented` > 0 that many more train images whose masks, like every train image's, are single-channel PNGs
    in SegmentationClassAug/ (the SBD-augmented set; val's masks are there too). Returns root."""
    from PIL import Image
    from data.segmentation import voc_palette
    root = Path(root)
    palette = [value for colour in voc_palette(256) for value in colour]
    listed: dict[str, list[str]] = {}
    extra = [(500, 375)] * augmented
    for split, split_sizes in [*sizes.items(), ("aug", extra)]:
        for index, size in enumerate(split_sizes):
            name = f"{2007 + STREAMS.get(split, 4)}_{index:06d}"
            image, street = render_street_scene(size, np.random.default_rng([seed, STREAMS.get(split, 4), index]))
            mask = VOC_CLASSES[street]
            objects = mask != 0
            grown = np.zeros_like(objects)
            for dy in (-2, -1, 0, 1, 2):  # the band of two pixels around (and inside) each object's outline
                for dx in (-2, -1, 0, 1, 2):
                    grown |= np.roll(np.roll(objects, dy, 0), dx, 1) != objects
            mask = np.where(grown & (mask != 255), 255, mask).astype(np.uint8)
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
            if split != "aug":
                indexed = Image.frombytes("P", size, mask.tobytes())  # the indices themselves, and VOC's colours
                indexed.putpalette(palette)
                (root / "SegmentationClass").mkdir(exist_ok=True)
                indexed.save(root / "SegmentationClass" / f"{name}.png")
                listed.setdefault(split, []).append(name)
            if augmented:
                write_png(root / "SegmentationClassAug" / f"{name}.png", mask)
    for split, names in listed.items():
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def render_street_scene(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: an (H, W, 3) uint8 picture and its (H, W) uint8 label map."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    label = np.full((height, width), SKY, np.uint8)
    shade = np.zeros((height, width, 3), np.float32)  # each object's own departure from its class colour

    def paint(mask: np.ndarray, cls: int, spread: float = 18.0) -> None:
        label[mask] = cls
        shade[mask] = rng.normal(0, spread, 3)

    unit = height / 120  # sizes are given for a picture 120 pixels high
    horizon = height * rng.uniform(0.35, 0.5)
    vanish = width * rng.uniform(0.3, 0.7)
    depth = np.clip((y - horizon) / (height - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom row
    road = width * (0.02 + rng.uniform(0.3, 0.5) * depth)  # half the road's width at each row
    paint(y > horizon, SIDEWALK, 10)
    paint((y > horizon) & (np.abs(x - vanish) < road), ROAD, 8)
    paint((y > horizon) & (np.abs(x - vanish) < 0.02 * road + unit) & ((y - horizon) / unit % 8 < 4), ROAD, 30)
    left = -rng.uniform(0, 0.1) * width
    while left < width:  # a row of facades along the horizon, with windows
        right = left + width * rng.uniform(0.12, 0.3)
        if rng.random() < 0.85:
            top = horizon - height * rng.uniform(0.1, 0.4)
            facade = (x >= left) & (x < right) & (y >= top) & (y <= horizon + 2 * unit)
            paint(facade, BUILDING)
            windows = facade & ((x - left) % (7 * unit) < 3.5 * unit) & ((y - top) % (9 * unit) < 4.5 * unit)
            shade[windows & (y < horizon)] -= 45
        left = right
    if rng.random() < 0.8:  # a fence before the facades of one side of the street
        side, tall = rng.choice([-1, 1]), rng.uniform(0.06, 0.14) * height
        band = (side * (x - vanish) > width * 0.08) & (y > horizon - tall) & (y < horizon + 3 * unit)
        paint(band & ((x / unit % 5 < 2.5) | (np.abs(y - horizon + 0.7 * tall) < 1.2 * unit)), FENCE, 12)
    objects = []  # (foot row, class, place across the street) of everything that stands on the ground
    for cls, chance, most in ((TREE, 0.9, 3), (POLE, 0.95, 3), (CAR, 0.95, 4), (PEDESTRIAN, 0.9, 4),
                              (BICYCLIST, 0.8, 2)):
        for _ in range(int(rng.integers(1, most + 1)) if rng.random() < chance else 0):
            objects.append((horizon + rng.uniform(0.12, 0.95) * (height - horizon), cls, rng.uniform(-1, 1)))
    for foot, cls, across in sorted(objects):  # far ones first: nearer ones cover them
        near = (foot - horizon) / (height - horizon)
        half = width * (0.02 + 0.4 * near)
        on_road = vanish + across * 0.8 * half
        on_sidewalk = vanish + np.sign(across) * half * (1.1 + 0.5 * abs(across))
        if cls == TREE:
            r = height * (0.06 + 0.14 * near)
            paint((np.abs(x - on_sidewalk) < 0.15 * r) & (y < foot) & (y > foot - 2 * r), TREE, 8)
            paint(((x - on_sidewalk) / r) ** 2 + ((y - foot + 2.2 * r) / (0.9 * r)) ** 2 < 1, TREE, 20)
        elif cls == POLE:
            tall, thick = height * (0.25 + 0.5 * near), max(1.5, width * (0.008 + 0.012 * near))
            paint((np.abs(x - on_sidewalk) < thick) & (y < foot) & (y > foot - tall), POLE, 10)
            if rng.random() < 0.8:
                r = max(3.0, height * (0.035 + 0.05 * near))
                paint((x - on_sidewalk) ** 2 + (y - foot + tall) ** 2 < r * r, SIGN, 25)
        elif cls == CAR:
            w, h = width * (0.06 + 0.3 * near), width * (0.06 + 0.3 * near) * rng.uniform(0.5, 0.7)
            body = (np.abs(x - on_road) < w / 2) & (y < foot) & (y > foot - 0.6 * h)
            cabin = (np.abs(x - on_road) < 0.3 * w) & (y <= foot - 0.6 * h) & (y > foot - h)
            paint(body | cabin, CAR, 30)
            shade[cabin & (np.abs(x - on_road) < 0.24 * w) & (y > foot - 0.92 * h)] -= 60
        elif cls == PEDESTRIAN:
            tall = height * (0.1 + 0.35 * near)
            body = ((x - on_sidewalk) / (0.14 * tall)) ** 2 + ((y - foot + 0.5 * tall) / (0.5 * tall)) ** 2 < 1
            head = (x - on_sidewalk) ** 2 + (y - foot + 1.05 * tall) ** 2 < (0.1 * tall) ** 2
            paint(body | head, PEDESTRIAN, 30)
        else:
            r = height * (0.015 + 0.045 * near)
            place = vanish + np.sign(across) * 0.85 * half
            wheels = (np.abs(np.hypot(x - place + 1.3 * r, y - foot + r) - r) < 0.25 * r + 0.5) | (
                np.abs(np.hypot(x - place - 1.3 * r, y - foot + r) - r) < 0.25 * r + 0.5)
            rider = ((x - place) / (0.45 * r)) ** 2 + ((y - foot + 2.6 * r) / (1.2 * r)) ** 2 < 1
            paint(wheels | rider | ((np.abs(y - foot + 1.3 * r) < 0.3 * r + 0.5) & (np.abs(x - place) < 1.3 * r)),
                  BICYCLIST, 25)
    if rng.random() < 0.6:  # a thing of no class, as CamVid's Void
        r = height * rng.uniform(0.02, 0.06)
        paint((x - rng.uniform(0, width)) ** 2 + (y - rng.uniform(0.5, 1) * height) ** 2 < r * r, IGNORE_INDEX, 40)
    light = rng.uniform(0.55, 1.35) * (1 + rng.normal(0, 0.08, 3))  # exposure and white balance of the scene
    noise = rng.normal(0, rng.uniform(3, 10), (height, width, 3))
    image = (PALETTE[label] + shade) * light.astype(np.float32) + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def make_cifar_like(root: str | Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> Path:
    """A learnable 10-class set in CIFAR-10's python format under root/cifar-10-batches-py/; returns root.

    Class k is shape k // 2 (disc, square, triangle, ring, cross) in colour family k % 2 (warm or cool),
    placed, sized and lit at random over a cluttered background. Real CIFAR-10 files are never replaced.
    """
    if min(n_train, n_test, seed) < 0:
        raise ValueError(f"n_train, n_test and seed must be non-negative, got {(n_train, n_test, seed)}")
    folder = Path(root) / CIFAR_FOLDER
    params = {"kind": "cifar_like", "version": VERSION, "n_train": n_train, "n_test": n_test, "seed": seed}
    if read_json(folder / MARKER) == params:
        return Path(root)
    first = folder / TRAIN_FILES[0]
    if first.is_file():
        try:  # this generator's batches say 'synthetic' in their batch_label; real ones say 'training batch'
            ours = read_pickle(first)[b"batch_label"].startswith(b"synthetic")
        except Exception:  # unreadable or foreign: not ours, so not to be overwritten
            ours = False
        if not ours:
            raise UserError(f"{folder} holds CIFAR-10 files this generator did not write; refusing to overwrite "
                            "them: give the synthetic set an empty folder of its own.")
    (folder / MARKER).unlink(missing_ok=True)
    rows, labels = _cifar_pictures(n_train, np.random.default_rng([seed, STREAMS["train"]]))
    batches = [(TRAIN_FILES[k], f"training batch {k + 1} of 5", part, part_labels)
               for k, (part, part_labels) in enumerate(zip(np.array_split(rows, 5), np.array_split(labels, 5)))]
    test = _cifar_pictures(n_test, np.random.default_rng([seed, STREAMS["test"]]))
    files = {META_FILE: {b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_vis": 3072}}
    for name, title, part, part_labels in [*batches, (TEST_FILE, "testing batch 1 of 1", *test)]:
        names = [f"synthetic_{CIFAR_CLASSES[k]}_{i:06d}.png".encode() for i, k in enumerate(part_labels)]
        files[name] = {b"batch_label": f"synthetic {title}".encode(), b"labels": [int(k) for k in part_labels],
                       b"data": part, b"filenames": names}
    for name, content in files.items():
        with atomic_open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    write_json(folder / MARKER, params)
    return Path(root)


def _cifar_pictures(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, 3072) uint8 rows in CIFAR's channel-first order, and balanced labels."""
    labels = rng.permutation(np.arange(count) % len(CIFAR_CLASSES))
    grid = np.arange(32, dtype=np.float32) + 0.5
    hue = rng.random((count, 1, 1, 1))
    background = 0.25 + 0.5 * rng.random((count, 1, 1, 3)) + 0.1 * np.sin(6 * hue + grid[None, :, None, None] / 5)
    centre = rng.uniform(9, 23, (2, count, 1, 1))
    angle = rng.uniform(0, 2 * np.pi, (count, 1, 1))
    dx, dy = grid[None, None, :] - centre[0], grid[None, :, None] - centre[1]
    u, v = dx * np.cos(angle) + dy * np.sin(angle), dy * np.cos(angle) - dx * np.sin(angle)
    r = rng.uniform(5, 10, (count, 1, 1))
    shapes = np.stack([np.hypot(u, v) - r, np.maximum(abs(u), abs(v)) - 0.8 * r,
                       np.maximum(np.maximum(v, -0.87 * u - 0.5 * v), 0.87 * u - 0.5 * v) - 0.5 * r,
                       abs(np.hypot(u, v) - 0.7 * r) - 0.25 * r,
                       np.minimum(np.maximum(abs(u) - r, abs(v) - 0.3 * r), np.maximum(abs(u) - 0.3 * r, abs(v) - r))])
    inside = np.clip(0.5 - shapes[labels // 2, np.arange(count)], 0, 1)[..., None]  # antialiased coverage
    middle = 0.35 + 0.5 * rng.random(count)  # warm: red to yellow; cool: cyan to blue
    warm = np.stack([np.full(count, 0.9), middle, np.full(count, 0.15)], 1)
    cool = np.stack([np.full(count, 0.15), middle, np.full(count, 0.9)], 1)
    colour = np.where((labels % 2 == 0)[:, None], warm, cool) * rng.uniform(0.5, 1.1, (count, 1))
    picture = background + (colour[:, None, None, :] - background) * inside
    picture = picture * rng.uniform(0.7, 1.3, (count, 1, 1, 1)) + rng.normal(0, 0.04, picture.shape)
    pixels = np.clip(np.rint(255 * picture), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).reshape(count, 3072)), labels
