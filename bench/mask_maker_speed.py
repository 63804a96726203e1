"""How fast data/mask_maker.py converts a 960x720 CamVid mask, against a per-pixel Python loop.

The thesis converted colour masks pixel by pixel in Python, seconds per mask; the
lookup table must stay under 50 ms per mask on one core. Pin the process to one core
yourself (numpy does not thread these operations anyway):

    taskset -c 0 python bench/mask_maker_speed.py [--masks COLOUR_DIR] [--quick]

With --masks, real coloured masks (e.g. 480x360 ones) are upscaled 2x (nearest) to 960x720;
otherwise synthetic masks of blocks of the 32 official colours are used.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import COLOURS, IGNORE_INDEX  # noqa: E402
from data.mask_maker import (ORIGINAL_CLASSES, colour_to_index, convert_file,  # noqa: E402
                             read_colour_mask)
from utils.io import write_png  # noqa: E402

HEIGHT, WIDTH = 720, 960


def synthetic_masks(count: int) -> list[np.ndarray]:
    """Blocks of 8x8 pixels in random official colours: many colour changes, like real masks."""
    rng = np.random.default_rng(0)
    palette = np.array([rgb for rgb, _ in ORIGINAL_CLASSES.values()], dtype=np.uint8)
    blocks = rng.integers(0, len(palette), size=(count, HEIGHT // 8, WIDTH // 8))
    return [palette[b].repeat(8, axis=0).repeat(8, axis=1) for b in blocks]


def real_masks(folder: Path, count: int) -> list[np.ndarray]:
    """Real masks brought to CamVid's native 960x720 by nearest-neighbour upscaling."""
    paths = sorted(folder.glob("*.png"))[:count]
    if len(paths) < count:
        raise SystemExit(f"{folder} holds {len(paths)} masks, the benchmark needs {count}.")
    masks = [read_colour_mask(path) for path in paths]
    scale = HEIGHT // masks[0].shape[0]
    return [mask.repeat(scale, axis=0).repeat(scale, axis=1) for mask in masks]


def python_loop(rgb: np.ndarray) -> np.ndarray:
    """The thesis's way: every pixel compared with each class colour in turn, in Python."""
    colours = [np.array(colour, dtype=np.uint8) for colour in COLOURS[:IGNORE_INDEX]]
    height, width, _ = rgb.shape
    out = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            for index, colour in enumerate(colours):
                if (rgb[y, x] == colour).all():
                    out[y, x] = index
                    break
    return out


def time_lut(masks: list[np.ndarray]) -> tuple[float, float]:
    """Milliseconds to build the table (once per run), then per mask."""
    start = time.perf_counter()
    colour_to_index(masks[0])
    build = time.perf_counter() - start
    start = time.perf_counter()
    for mask in masks:
        colour_to_index(mask)
    return build * 1000, (time.perf_counter() - start) * 1000 / len(masks)


def time_files(masks: list[np.ndarray]) -> float:
    """Milliseconds per mask file including PNG decoding and encoding, one thread."""
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"m{i}_L.png" for i in range(len(masks))]
        for path, mask in zip(paths, masks):
            write_png(path, mask)
        start = time.perf_counter()
        for path in paths:
            convert_file(path, path.with_name(path.name.replace("_L", "")))
        return (time.perf_counter() - start) * 1000 / len(masks)


def time_loop(mask: np.ndarray, step: int) -> float:
    """Seconds for a whole mask, from the loop run on every `step`-th row (spread, not biased
    to the sky at the top), and checked against the lookup table."""
    rows = mask[::step]
    start = time.perf_counter()
    expected = python_loop(rows)
    seconds = (time.perf_counter() - start) * mask.shape[0] / rows.shape[0]
    if not np.array_equal(expected, colour_to_index(rows, eleven_only=True)[0]):
        raise SystemExit("the loop and the lookup table disagree; the benchmark is broken")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=Path, help="folder of coloured masks to upscale 2x")
    parser.add_argument("--quick", action="store_true",
                        help="20 masks, and the loop on every 40th row of a mask instead of all rows")
    args = parser.parse_args()
    count, step = (20, 40) if args.quick else (100, 1)
    masks = real_masks(args.masks, count) if args.masks else synthetic_masks(count)
    build, per_mask = time_lut(masks)
    print(f"lookup table: {per_mask:.1f} ms per {WIDTH}x{HEIGHT} mask (mean of {count}; "
          f"{time_files(masks):.1f} ms with PNG read+write; table built once in {build:.0f} ms)")
    what = "whole mask" if step == 1 else f"every {step}th row, extrapolated to {HEIGHT} rows"
    print(f"per-pixel Python loop: {time_loop(masks[0], step):.1f} s per mask ({what})")

if __name__ == "__main__":
    main()
