"""Wall time of one CIFAR-10 teacher epoch and one student epoch at the full data size.

    python bench/cifar_epochs.py [--data data/cifar] [--device auto] [--json PATH]

Without --data, a synthetic set of the real size (50000 + 10000 images, real file format) is
generated first. The epochs go through the project's own phases (GPU-resident data, batched
augmentation); the student's pseudo-labels are random here, since an epoch costs the same
whatever the labels, and pseudo-labeling is timed on its own and scaled to the unlabeled set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

import semisup_cif  # noqa: E402
from data.synthetic import make_cifar_like  # noqa: E402
from utils.classification import CifarSelfTraining  # noqa: E402
from utils.config import configure  # noqa: E402
from utils.dist import setup  # noqa: E402
from utils.engine import Phase, predict_probs, train_one_epoch  # noqa: E402
from utils.records import Run  # noqa: E402


def time_epoch(model: torch.nn.Module, phase: Phase, loop: CifarSelfTraining) -> float:
    optimizer = phase.make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, phase.steps_per_epoch)
    began = time.perf_counter()
    train_one_epoch(model, phase.batches(torch.Generator().manual_seed(0)), phase.steps_per_epoch, optimizer,
                    scheduler, phase.loss_fn, loop.rt)
    if loop.rt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a folder holding cifar-10-batches-py (default: synthetic, generated)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(make_cifar_like(Path(tmp) / "cifar", n_train=50000, n_test=10000))
        cfg = configure(vars(semisup_cif), [f"--data_root={data}", f"--device={args.device}",
                                            f"--run_dir={tmp}/run", f"--save_dir={tmp}/ckpt"])
        rt = setup(cfg.device)
        loop = CifarSelfTraining(cfg, rt, Run(Path(cfg.run_dir), cfg))
        model = loop.new_model()
        figures = {"teacher_epoch_s": time_epoch(model, loop.labeled_phase("teacher", 0, 1, cfg.teacher_lr), loop)}
        images = loop.unlabeled[0]
        sample = images[:2000]
        began = time.perf_counter()
        for start in range(0, len(sample), cfg.eval_batch_size):
            predict_probs(model, sample[start : start + cfg.eval_batch_size], rt)
        figures["pseudo_label_s"] = (time.perf_counter() - began) * len(images) / len(sample)
        loop.pseudo = (images, torch.randint(0, 10, (len(images),), device=images.device))
        figures["student_epoch_s"] = time_epoch(model, loop.pseudo_phase("it1_pseudo", 1, 1, cfg.pseudo_lr), loop)
        figures.update(labeled=len(loop.labeled[0]), unlabeled=len(images), device=str(rt.device),
                       threads=torch.get_num_threads())
    for key, value in figures.items():
        print(f"{key:>16}: {value:.1f}" if isinstance(value, float) else f"{key:>16}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
