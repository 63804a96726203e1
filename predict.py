"""Segment a folder of images with a trained SwiftNet checkpoint.

Training measures a model on CamVid's test set; this shows it on anything else (new video frames,
another city) and hands its masks to other tools:

    python predict.py --checkpoint saved_models/pseudo_cam/teacher_best.pth.tar \\
        --images data/camvid/unlabeled/train --out predictions

writes OUT/index/<name>.png (class indices: CamVid's 0..10, Cityscapes' 19 train ids, Pascal VOC's
0..20, or those of your classes.json; the format of the labels) and OUT/colour/<name>.png (the data
set's colours), each at its image's own size, whatever the sizes and orientations of the images.
Images are predicted at --image-scale (by default the scale the checkpoint was trained at, with its
MAX_SIDE) and the class probabilities are resized back bilinearly, as for the pseudo-labels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data.datasets import DATASETS
from data.segmentation import ClassTable, decode_image, image_files, image_size
from models.swiftnet import swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_weights
from utils.dist import Runtime, resolve_device, resolve_precision
from utils.engine import predict_probs
from utils.errors import UserError
from utils.io import write_png
from utils.pictures import colourise


def class_table(checkpoint: dict, config: dict, path: Path) -> ClassTable:
    """The classes, colours and statistics the checkpoint carries; for a checkpoint from before it carried them,
    those of the data set its run trained on, read from that data set."""
    if "classes" in checkpoint:
        table = checkpoint["classes"]
        try:
            return ClassTable(tuple(table["names"]), tuple(tuple(c) for c in table["colours"]), tuple(table["mean"]),
                              tuple(table["std"]), table["ignore_name"])
        except (KeyError, TypeError) as error:
            raise UserError(f"{path} holds a damaged class table ({error!r}): train the model again.") from error
    dataset = DATASETS.get(config.get("dataset", "camvid"))
    if dataset is None:
        raise UserError(f"{path} was trained on --dataset={config.get('dataset')}, which this code does not know.")
    return dataset.classes(Path(config.get("data_root", "")), config.get("normalization", "dataset"))[0]


def load_model(path: Path, rt: Runtime) -> tuple[nn.Module, dict, ClassTable]:
    """The SwiftNet-RN18 of a checkpoint, on the device, the config it was trained with and its classes."""
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    classes = class_table(checkpoint, config, path)
    model = swiftnet_rn18(classes.num_classes, classes.mean, classes.std)
    load_weights(model, checkpoint, path)
    return rt.prepare(model).eval(), config, classes


def same_size_batches(paths: Sequence[Path], batch_size: int) -> Iterator[tuple[list[Path], tuple[int, int]]]:
    """Consecutive images of one size (width, height), at most `batch_size` at a time: one tensor each; photos of
    mixed sizes and orientations come one by one or in runs of one size."""
    batch: list[Path] = []
    size = None
    for path in paths:
        this = image_size(path)
        if batch and (this != size or len(batch) == batch_size):
            yield batch, size
            batch = []
        batch.append(path)
        size = this
    if batch:
        yield batch, size


def predict_batch(model: nn.Module, paths: Sequence[Path], size: tuple[int, int], scale: float,
                  rt: Runtime, max_side: int = 0) -> np.ndarray:
    """Class indices (B,H,W) uint8 at the images' own size (width, height) `size`, predicted at `scale` with the
    longer side capped at `max_side`."""
    images = torch.from_numpy(np.stack([decode_image(path, scale, max_side) for path in paths])).permute(0, 3, 1, 2)
    probs = predict_probs(model, images, rt)
    if probs.shape[-2:] != (size[1], size[0]):
        probs = F.interpolate(probs, (size[1], size[0]), mode="bilinear", align_corners=False)
    return probs.argmax(1).to(torch.uint8).cpu().numpy()


def predict_folder(model: nn.Module, images: Path, out: Path, scale: float, batch_size: int,
                   colours: Sequence[tuple[int, int, int]], rt: Runtime, max_side: int = 0) -> int:
    """Writes OUT/index/<name>.png and OUT/colour/<name>.png for every image; returns their number."""
    paths = image_files(images, "Give --images a folder of .png/.jpg images to segment.")
    with tqdm(total=len(paths), desc="predict", unit="image", dynamic_ncols=True) as bar:
        for batch, size in same_size_batches(paths, batch_size):
            for path, labels in zip(batch, predict_batch(model, batch, size, scale, rt, max_side)):
                write_png(out / "index" / f"{path.stem}.png", labels)
                write_png(out / "colour" / f"{path.stem}.png", colourise(labels, colours))
            bar.update(len(batch))
    return len(paths)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Segment every image of a folder with a SwiftNet checkpoint.")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a .pth.tar of this project")
    parser.add_argument("--images", type=Path, required=True, help="folder of .png/.jpg images")
    parser.add_argument("--out", type=Path, required=True, help="folder for index/ and colour/")
    parser.add_argument("--image-scale", type=float, help="resize factor before predicting "
                                                          "(default: IMAGE_SCALE of the checkpoint's config, else 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", default="auto", help="auto (bf16 where the device computes it natively), "
                                                            "fp32 or bf16")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Does the work of the command line; returns its final line."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size={args.batch_size}: give at least 1.")
    if not args.images.is_dir():
        raise UserError(f"--images {args.images} is not a folder: give a folder of .png/.jpg images.")
    device = resolve_device(args.device)
    rt = Runtime(device, precision=resolve_precision(args.precision, device))
    model, config, classes = load_model(args.checkpoint, rt)
    scale = args.image_scale if args.image_scale is not None else float(config.get("image_scale", 1.0))
    if not 0 < scale < float("inf"):
        raise UserError(f"--image-scale={scale}: give a positive factor, e.g. 0.5 for half size.")
    try:
        count = predict_folder(model, args.images, args.out, scale, args.batch_size, classes.colours, rt,
                               int(config.get("max_side", 0)))
    except OSError as error:
        raise UserError(f"Cannot write into {args.out} ({error.strerror}). Choose a writable --out folder.") from error
    return f"Predicted {count} images at scale {scale:g}: {args.out / 'index'} and {args.out / 'colour'}"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        line = run(args)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(line)


if __name__ == "__main__":
    main()
