"""Wall time of one CIFAR-10 teacher epoch and one student epoch at the full data size.

    python bench/cifar_epochs.py [--data data/cifar] [--device auto] [--json PATH]

Without --data, a synthetic set of the real size (50000 + 10000 images, real file format) is
generated first. The epochs use semisup_cif.py's own batches (data on the device, batched
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
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

import semisup_cif  # noqa: E402
from data.synthetic import make_cifar_like  # noqa: E402
from utils.config import configure  # noqa: E402
from utils.dist import Runtime, setup  # noqa: E402
from utils.engine import batch_plan, cross_entropy, predict_probs, train_one_epoch  # noqa: E402
from utils.records import Run  # noqa: E402


def time_epoch(model: torch.nn.Module, batches: Callable[[torch.Generator], Iterator], steps: int, lr: float,
               rt: Runtime) -> float:
    """One epoch of the script's own batches, with its optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    began = time.perf_counter()
    train_one_epoch(model, batches(torch.Generator().manual_seed(0)), steps, optimizer, scheduler, cross_entropy, rt)
    if rt.device.type == "cuda":
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
        run = Run(Path(cfg.run_dir), cfg)
        labeled, _, unlabeled, _ = semisup_cif.load_data(cfg, rt, run)
        model = semisup_cif.fresh_model(cfg, rt, 0)
        (count,), steps = batch_plan([len(labeled[0])], cfg.batch_size, rt)
        figures = {"teacher_epoch_s": time_epoch(
            model, lambda g: semisup_cif.labeled_batches(labeled, count, steps, g, rt), steps, cfg.teacher_lr, rt)}
        images = unlabeled[0]
        sample = images[:2000]
        began = time.perf_counter()
        for start in range(0, len(sample), cfg.eval_batch_size):
            predict_probs(model, sample[start : start + cfg.eval_batch_size], rt)
        figures["pseudo_label_s"] = (time.perf_counter() - began) * len(images) / len(sample)
        pseudo = (images, torch.randint(0, 10, (len(images),), device=images.device))
        (count,), steps = batch_plan([len(images)], cfg.batch_size, rt)
        figures["student_epoch_s"] = time_epoch(
            model, lambda g: semisup_cif.pseudo_batches(pseudo, count, steps, g, cfg, rt, None), steps, cfg.pseudo_lr,
            rt)
        figures.update(labeled=len(labeled[0]), unlabeled=len(images), device=str(rt.device),
                       threads=torch.get_num_threads())
    for key, value in figures.items():
        print(f"{key:>16}: {value:.1f}" if isinstance(value, float) else f"{key:>16}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
