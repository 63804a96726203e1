"""Turn CamVid's coloured label masks into single-channel class-index masks in the thesis order.

A lookup table over every 24-bit colour converts a 960x720 mask in milliseconds. Colours outside the palette
become Void and are reported, as they mean a damaged or wrongly exported label file.

    python data/mask_maker.py --src COLOUR_DIR --out INDEX_DIR [--src COLOUR_DIR --out INDEX_DIR ...] [--eleven-only]
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

if __package__ in (None, ""):  # run as `python data/mask_maker.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import CLASS_NAMES, COLOURS, IGNORE_INDEX  # noqa: E402
from utils.io import write_png  # noqa: E402
from utils.pictures import colourise  # noqa: E402

# CamVid's 32 original classes (label_colors.txt): name -> (RGB, the class of the 11 it joins), as SegNet groups them.
ORIGINAL_CLASSES: dict[str, tuple[tuple[int, int, int], str]] = {
    "Building": ((128, 0, 0), "Building"),
    "Bridge": ((0, 128, 64), "Building"),
    "Wall": ((64, 192, 0), "Building"),
    "Tunnel": ((64, 0, 64), "Building"),
    "Archway": ((192, 0, 128), "Building"),
    "Tree": ((128, 128, 0), "Tree"),
    "VegetationMisc": ((192, 192, 0), "Tree"),
    "Sky": ((128, 128, 128), "Sky"),
    "Car": ((64, 0, 128), "Car"),
    "SUVPickupTruck": ((64, 128, 192), "Car"),
    "Truck_Bus": ((192, 128, 192), "Car"),
    "Train": ((192, 64, 128), "Car"),
    "OtherMoving": ((128, 64, 64), "Car"),
    "SignSymbol": ((192, 128, 128), "SignSymbol"),
    "Misc_Text": ((128, 128, 64), "SignSymbol"),
    "TrafficLight": ((0, 64, 64), "SignSymbol"),
    "Road": ((128, 64, 128), "Road"),
    "LaneMkgsDriv": ((128, 0, 192), "Road"),
    "LaneMkgsNonDriv": ((192, 0, 64), "Road"),
    "Pedestrian": ((64, 64, 0), "Pedestrian"),
    "Child": ((192, 128, 64), "Pedestrian"),
    "CartLuggagePram": ((64, 0, 192), "Pedestrian"),
    "Animal": ((64, 128, 64), "Pedestrian"),
    "Fence": ((64, 64, 128), "Fence"),
    "Column_Pole": ((192, 192, 128), "Column_Pole"),
    "TrafficCone": ((0, 0, 64), "Column_Pole"),
    "Sidewalk": ((0, 0, 192), "Sidewalk"),
    "ParkingBlock": ((64, 192, 128), "Sidewalk"),
    "RoadShoulder": ((128, 128, 192), "Sidewalk"),
    "Bicyclist": ((0, 128, 192), "Bicyclist"),
    "MotorcycleScooter": ((192, 0, 192), "Bicyclist"),
    "Void": ((0, 0, 0), "Void"),
}

_UNKNOWN = 255  # lookup value of colours outside the palette; never a class index


def class_index(name: str) -> int:
    """Thesis index of one of the 11 classes, or Void's ignore index."""
    return IGNORE_INDEX if name == "Void" else CLASS_NAMES.index(name)


def _pack(rgb: np.ndarray) -> np.ndarray:
    """One 24-bit integer per pixel, so a colour can index a flat table."""
    rgb = rgb.astype(np.uint32, copy=False)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@lru_cache(maxsize=2)
def _lookup_table(eleven_only: bool) -> np.ndarray:
    """A 16 MiB table over every 24-bit colour, built once per process and palette."""
    if eleven_only:  # the thesis's own converter knew only the 11 class colours and Void's
        palette = {colour: index for index, colour in enumerate(COLOURS)}
    else:
        palette = {rgb: class_index(target) for rgb, target in ORIGINAL_CLASSES.values()}
    table = np.full(1 << 24, _UNKNOWN, dtype=np.uint8)
    table[_pack(np.array(list(palette), dtype=np.uint8))] = list(palette.values())
    return table


def colour_to_index(rgb: np.ndarray, eleven_only: bool = False) -> tuple[np.ndarray, int]:
    """Map an (H,W,3) uint8 colour mask to (index mask uint8, number of unknown-colour pixels).

    With eleven_only, the 21 official colours outside the 11 classes count as unknown, as in the thesis.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 colour mask, got {rgb.shape} {rgb.dtype}")
    index = _lookup_table(eleven_only)[_pack(rgb)]
    unknown = index == _UNKNOWN
    index[unknown] = IGNORE_INDEX
    return index, int(np.count_nonzero(unknown))


def index_to_colour(index: np.ndarray) -> np.ndarray:
    """An index mask in CamVid's colours, to look at; values that are no class get Void's colour."""
    return colourise(index, COLOURS)


def pair_labels(src_dir: Path) -> dict[str, Path]:
    """Output name -> coloured label file. `<image>_L.png` (the official name) and `<image>.png` both become
    `<image>.png`, so labels pair with images; two files that would overwrite each other are refused."""
    if not src_dir.is_dir():
        raise SystemExit(f"{src_dir} is not a folder; give the folder of coloured masks.")
    pairs: dict[str, Path] = {}
    for path in sorted(src_dir.glob("*.png")):
        name = f"{path.stem.removesuffix('_L')}.png"
        if name in pairs:
            raise SystemExit(f"{pairs[name].name} and {path.name} in {src_dir} would both be written as {name}; "
                             "keep only one of them.")
        pairs[name] = path
    return pairs


def read_colour_mask(path: Path) -> np.ndarray:
    """Decode a label picture as RGB, whatever mode (palette, RGBA) it was saved in."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise SystemExit(f"mask_maker: {path} cannot be read as an image ({error}); replace it with the "
                         "coloured mask of the CamVid release, or remove it.") from None


def convert_file(src: Path, dst: Path, eleven_only: bool = False) -> int:
    """Convert one coloured mask file; returns its number of unknown-colour pixels."""
    index, unknown = colour_to_index(read_colour_mask(src), eleven_only)
    write_png(dst, index)
    return unknown


def run_in_threads(tasks: dict[Path, Callable[[], int]], workers: int, desc: str, unit: str) -> dict[Path, int]:
    """Source file -> the unknown-pixel count its task returns; each file that had colours outside the palette
    is reported, so bad files can be found. Threads overlap PNG decoding and encoding, which release the GIL
    and dominate the cost."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        counts = list(tqdm(pool.map(lambda task: task(), tasks.values()), total=len(tasks), desc=desc, unit=unit))
    for path, count in zip(tasks, counts):
        if count:
            tqdm.write(f"{path}: {count} pixels of unknown colour mapped to Void", file=sys.stderr)
    return dict(zip(tasks, counts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, action="append", required=True,
                        help="folder of coloured masks (<image>_L.png or <image>.png); repeatable")
    parser.add_argument("--out", type=Path, action="append", required=True,
                        help="folder for the index masks; one per --src, in the same order")
    parser.add_argument("--eleven-only", action="store_true", help="only the 11 class colours map, the rest is Void")
    parser.add_argument("--workers", type=int, default=2, help="threads for PNG decoding and encoding")
    args = parser.parse_args(argv)
    if len(args.src) != len(args.out):
        parser.error(f"got {len(args.src)} --src but {len(args.out)} --out; give them in pairs")
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: give at least 1 thread")
    for src, out in zip(args.src, args.out):
        if src.resolve() == out.resolve():
            parser.error(f"--out {out} is --src itself: the index masks would replace the colour masks they are made "
                         "from. Give another --out folder.")
    counts: dict[Path, int] = {}
    for src, out in zip(args.src, args.out):
        pairs = pair_labels(src)
        if not pairs:
            raise SystemExit(f"mask_maker: no .png masks in {src}; check the --src folder.")
        tasks = {path: partial(convert_file, path, out / name, args.eleven_only) for name, path in pairs.items()}
        try:
            counts.update(run_in_threads(tasks, args.workers, f"masks {src.name}", "mask"))
        except OSError as error:
            raise SystemExit(f"mask_maker: cannot write into {out} ({error.strerror or error}): give a writable --out "
                             "folder with room for the masks.") from None
    bad = sum(1 for count in counts.values() if count)
    print(f"converted {len(counts)} masks; {bad} had colours outside the palette "
          f"({sum(counts.values())} pixels mapped to Void)")


if __name__ == "__main__":
    main()
