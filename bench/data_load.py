"""How fast a data set's files decode into the uint8 storage training indexes, the memory it takes, and how
fast training batches come out of it: Cityscapes (2048x1024 PNGs, one size) or Pascal VOC (JPEGs of mixed
sizes and orientations, held each at its own size).

    python bench/data_load.py --dataset cityscapes --images 64 --out /tmp/cityscapes_bench --scale 0.5 [--cache DIR]
    python bench/data_load.py --dataset pascal --images 10582 --out /tmp/voc_bench [--cache DIR]

Writes IMAGES generated scenes in the data set's layout unless OUT holds them (Cityscapes with sensor-like
noise, so that the PNGs are about as large as real ones; VOC with the size distribution of VOC 2012 and JPEG
noise), then loads the train set at SCALE with data/datasets.py (into memory, or with --cache as DATA_CACHE's
memory-mapped files) and prints images per second, the storage's size, the peak resident memory of the
process, and how fast batches of 12 random images are gathered on the host (what a batch costs before it
is copied to the GPU when the data set is not held there). With --crops it also times training batches
(gather, scale, crop, flip) and training steps of SwiftNet-RN18, against the same number of images of one
size (500x375).
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if __package__ in (None, ""):  # run as `python bench/data_load.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.datasets import DATASETS, load_subset  # noqa: E402
from data.segmentation import SegmentationSet  # noqa: E402
from data.synthetic import VOC_CLASSES, render_street_scene, voc_sizes  # noqa: E402
from data.transforms import scale_crop_flip  # noqa: E402
from models.swiftnet import swiftnet_rn18  # noqa: E402
from utils.engine import cross_entropy  # noqa: E402
from utils.io import write_png  # noqa: E402

CITYSCAPES_SIZE = (2048, 1024)
SCENE_TO_ID = np.array([11, 21, 23, 26, 20, 7, 24, 13, 17, 8, 33, 0], np.uint8)


def make_cityscapes(root: Path, count: int) -> float:
    """`count` train images with their label ids; returns the mean PNG size in MB."""
    rng = np.random.default_rng(0)
    for i in range(count):
        image, labels = render_street_scene((CITYSCAPES_SIZE[0] // 4, CITYSCAPES_SIZE[1] // 4), rng)
        image = np.repeat(np.repeat(image, 4, 0), 4, 1).astype(np.int16) + rng.normal(0, 6, (*CITYSCAPES_SIZE[::-1], 3))
        folder = f"bench/bench_000000_{i:06d}"
        write_png(root / "leftImg8bit" / "train" / f"{folder}_leftImg8bit.png", np.clip(image, 0, 255).astype(np.uint8))
        write_png(root / "gtFine" / "train" / f"{folder}_gtFine_labelIds.png",
                  np.repeat(np.repeat(SCENE_TO_ID[labels], 4, 0), 4, 1))
    images = list((root / "leftImg8bit" / "train").rglob("*.png"))
    return sum(p.stat().st_size for p in images) / len(images) / 1e6


def make_pascal(root: Path, count: int) -> float:
    """A VOC2012 tree whose SegmentationClassAug/ labels `count` train images of VOC's sizes (and 8 val images);
    scenes drawn at a quarter size and enlarged, with noise, so that the JPEGs are about as large as VOC's.
    Returns the mean JPEG size in kB."""
    rng = np.random.default_rng(0)
    names = {"train": [f"2011_{i:06d}" for i in range(count)], "val": [f"2012_{i:06d}" for i in range(8)]}
    sizes = voc_sizes(count + 8)
    for name, (width, height) in zip(names["train"] + names["val"], sizes):
        image, labels = render_street_scene((max(width // 4, 32), max(height // 4, 32)), rng)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR)).astype(np.int16)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        mask = np.asarray(Image.fromarray(VOC_CLASSES[labels]).resize((width, height), Image.NEAREST))
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        write_png(root / "SegmentationClassAug" / f"{name}.png", mask)
        if name in names["val"]:
            write_png(root / "SegmentationClass" / f"{name}.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names[split][:8]) + "\n")
    images = list((root / "JPEGImages").glob("*.jpg"))
    return sum(p.stat().st_size for p in images) / len(images) / 1e3


def rate(work: Callable[[], int], repeats: int = 5) -> float:
    """Items per second of `work` (which returns how many it processed): the median of `repeats` after one."""
    work()
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        rates.append(work() / (time.perf_counter() - began))
    return statistics.median(rates)


def crop_rates(data: SegmentationSet, crop: int, batch: int, steps: bool) -> tuple[float, float | None]:
    """Training batches per second (gather, scale, crop, flip) as crops/s, and training steps as crops/s."""
    classes = DATASETS["pascal"].CLASSES
    generator = torch.Generator().manual_seed(0)

    def crops() -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(data), (batch,), generator=generator)
        images, labels, sizes = data.gather(index, classes.mean, classes.ignore_index)
        return scale_crop_flip(images, labels, crop, classes.mean, classes.ignore_index, generator, sizes=sizes)

    data_rate = rate(lambda: len(crops()[0]))
    if not steps:
        return data_rate, None
    torch.manual_seed(0)
    model = swiftnet_rn18(classes.num_classes, classes.mean, classes.std).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> int:
        images, labels = crops()
        loss = cross_entropy(model(images), labels, classes.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(images)

    return data_rate, rate(step, repeats=3)


def one_size_copy(data: SegmentationSet, size: tuple[int, int] = (500, 375)) -> SegmentationSet:
    """The same images resized to one size (width, height), held as one tensor: what the one-size path trains from."""
    height, width = size[1], size[0]
    images = torch.cat([F.interpolate(data.image(i)[None].float(), (height, width), mode="bilinear")
                        for i in range(len(data))]).round().to(torch.uint8)
    labels = torch.cat([F.interpolate(data.label(i)[None, None].float(), (height, width), mode="nearest")[:, 0]
                        for i in range(len(data))]).to(torch.uint8)
    return SegmentationSet(images, labels, data.names, torch.tensor([[height, width]] * len(data)), [size] * len(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("cityscapes", "pascal"), default="cityscapes")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cache", type=Path, help="DATA_CACHE folder")
    parser.add_argument("--crops", type=int, default=0, help="time training batches on this many images of each kind")
    args = parser.parse_args()
    if args.dataset == "cityscapes" and not (args.out / "gtFine").is_dir():
        megabytes = make_cityscapes(args.out, args.images)
        print(f"wrote {args.images} images of {CITYSCAPES_SIZE[0]}x{CITYSCAPES_SIZE[1]}, {megabytes:.2f} MB per PNG")
    if args.dataset == "pascal" and not (args.out / "JPEGImages").is_dir():
        kilobytes = make_pascal(args.out, args.images)
        print(f"wrote {args.images} VOC-sized JPEGs, {kilobytes:.0f} kB each on average")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    began = time.perf_counter()
    data = load_subset(args.dataset, args.out, "train", args.scale, args.cache)
    seconds = time.perf_counter() - began
    held = (data.images.numel() + data.labels.numel()) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    speed = len(data) / seconds
    print(f"scale {args.scale}: {len(data)} images ({'one size' if data.one_size else 'each at its own size'}) in "
          f"{seconds:.1f} s ({speed:.2f} images/s), storage {held:.2f} GB, peak RSS {peak:.2f} GB (before loading "
          f"{before:.2f})")
    generator = torch.Generator().manual_seed(0)
    gathered = rate(lambda: len([data.gather(torch.randint(len(data), (12,), generator=generator), (0, 0, 0), 0)
                                 for _ in range(5)]))
    print(f"batches of 12 gathered on the host: {gathered:.1f} per second")
    if args.crops:
        part = data.subset(range(min(args.crops, len(data))))
        for title, kind in (("each at its own size", part), ("one size, 500x375", one_size_copy(part))):
            batches, steps = crop_rates(kind, 192, 8, steps=True)
            print(f"{len(kind)} images {title}: training batches {batches:.1f} crops/s, training steps (crops of "
                  f"192, batch 8, {torch.get_num_threads()} threads) {steps:.2f} crops/s")


if __name__ == "__main__":
    main()
