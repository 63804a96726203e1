"""How fast Cityscapes-format files decode into the uint8 tensors training indexes, and the memory it takes.

    python bench/cityscapes_load.py --images 64 --out /tmp/cityscapes_bench --scale 0.5 [--cache DIR]

Writes IMAGES generated 2048x1024 scenes in the official layout (with sensor-like noise, so that the PNGs
are about as large as real ones) unless OUT holds them, then loads them at SCALE with data/cityscapes.py
(into memory, or with --cache as DATA_CACHE's memory-mapped files) and prints images per second, the
tensors' size, the peak resident memory of the process, what those mean for the 2,975 train images,
and how fast batches of 12 random images are gathered on the host (what a batch costs before it is
copied to the GPU when the data set is not held there).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python bench/cityscapes_load.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import cityscapes  # noqa: E402
from data.synthetic import render_street_scene  # noqa: E402
from utils.io import write_png  # noqa: E402

SIZE = (2048, 1024)
SCENE_TO_ID = np.array([11, 21, 23, 26, 20, 7, 24, 13, 17, 8, 33, 0], np.uint8)


def make_tree(root: Path, count: int) -> float:
    """`count` train images with their label ids; returns the mean PNG size in MB."""
    rng = np.random.default_rng(0)
    for i in range(count):
        image, labels = render_street_scene((SIZE[0] // 4, SIZE[1] // 4), rng)
        image = np.repeat(np.repeat(image, 4, 0), 4, 1).astype(np.int16) + rng.normal(0, 6, (*SIZE[::-1], 3))
        folder = f"bench/bench_000000_{i:06d}"
        write_png(root / "leftImg8bit" / "train" / f"{folder}_leftImg8bit.png", np.clip(image, 0, 255).astype(np.uint8))
        write_png(root / "gtFine" / "train" / f"{folder}_gtFine_labelIds.png",
                  np.repeat(np.repeat(SCENE_TO_ID[labels], 4, 0), 4, 1))
    images = list((root / "leftImg8bit" / "train").rglob("*.png"))
    return sum(p.stat().st_size for p in images) / len(images) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cache", type=Path, help="DATA_CACHE folder")
    args = parser.parse_args()
    if not (args.out / "gtFine").is_dir():
        megabytes = make_tree(args.out, args.images)
        print(f"wrote {args.images} images of {SIZE[0]}x{SIZE[1]}, {megabytes:.2f} MB per PNG")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    began = time.perf_counter()
    data = cityscapes.load_subset(args.out, "train", args.scale, args.cache)
    seconds = time.perf_counter() - began
    held = (data.images.numel() + data.labels.numel()) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    rate = len(data) / seconds
    print(f"scale {args.scale}: {len(data)} images in {seconds:.1f} s ({rate:.2f} images/s), tensors {held:.2f} GB, "
          f"peak RSS {peak:.2f} GB (before loading {before:.2f}); for 2,975 images: {2975 / rate / 60:.1f} min, "
          f"{held / len(data) * 2975:.1f} GB")
    generator = torch.Generator().manual_seed(0)
    began = time.perf_counter()
    for _ in range(20):
        index = torch.randint(len(data), (12,), generator=generator)
        data.images[index], data.labels[index]  # copies: reads every page of the 12 images
    print(f"batches of 12 gathered on the host: {20 / (time.perf_counter() - began):.1f} per second")


if __name__ == "__main__":
    main()
