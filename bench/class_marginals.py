"""How much of each class models predict on a run's unlabeled images: their mean softmax over every pixel.

    python bench/class_marginals.py --data_root data/camvid --image_scale 0.25 --split runs/NAME/split.json \
        --model teacher=saved_models/T/teacher_best.pth.tar \
        --model "mean teacher=runs/NAME/last_it1_joint.pth.tar#mean_teacher"

Self-training can drift towards the frequent classes (PSEUDO_ALIGN is meant against that); this
shows whether it did: the ground truth of the unlabeled images, the labeled images' class mix, then
one row per model, in percent, as a Markdown table. `PATH#key` takes the weights under `key` of the
checkpoint (default `state_dict`), e.g. the mean teacher a student phase kept.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import STATISTICS, SegmentationSet, load_split  # noqa: E402
from data.classes import CLASS_NAMES, NUM_CLASSES  # noqa: E402
from models.swiftnet import swiftnet_rn18  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.dist import Runtime  # noqa: E402
from utils.engine import predict_probs  # noqa: E402


def label_mix(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels[labels < NUM_CLASSES].long(), minlength=NUM_CLASSES).double()
    return counts / counts.sum()


def predicted_mix(model: torch.nn.Module, images: SegmentationSet, rt: Runtime, batch: int = 16) -> torch.Tensor:
    total = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for start in range(0, len(images), batch):
        total += predict_probs(model, images.images[start : start + batch], rt).double().sum((0, 2, 3)).cpu()
    return total / total.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--image_scale", type=float, default=1.0)
    parser.add_argument("--split", required=True, help="a run's split.json")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=PATH[#key]")
    args = parser.parse_args()
    rt = Runtime(torch.device("cpu"))
    train = load_split(Path(args.data_root), "train", args.image_scale)
    split = json.loads(Path(args.split).read_text())
    position = {name: i for i, name in enumerate(train.names)}
    unlabeled = train.subset([position[name] for name in split["unlabeled"]])
    labeled = train.subset([position[name] for name in split["labeled"]])
    rows = {"ground truth of the unlabeled images": label_mix(unlabeled.labels),
            "labeled images": label_mix(labeled.labels)}
    for spec in args.model:
        label, _, where = spec.partition("=")
        path, _, key = where.partition("#")
        model = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
        model.load_state_dict(load_checkpoint(path)[key or "state_dict"])
        rows[label] = predicted_mix(model, unlabeled, rt)
    print("| | " + " | ".join(CLASS_NAMES) + " |")
    print("|---" * (NUM_CLASSES + 1) + "|")
    for label, mix in rows.items():
        print(f"| {label} | " + " | ".join(f"{100 * share:.1f}" for share in mix.tolist()) + " |")


if __name__ == "__main__":
    main()
