"""Two processes under torchrun (gloo, CPU) run the whole CamVid loop like one process would.

The run is checked from the outside: the records are written once, the pseudo-labels are
complete, and the validation score the two processes agreed on equals a single-process
evaluation of the checkpoint they saved.
"""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from data.camvid import NUM_CLASSES, STATISTICS
from data.datasets import load_subset
from data.synthetic import make_street_scenes
from models.swiftnet import swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_weights
from utils.dist import Runtime
from utils.engine import evaluate

REPO = Path(__file__).resolve().parents[1]


def run_two_processes(tmp: Path, *options: str) -> tuple[Path, subprocess.CompletedProcess]:
    """One iteration of the CamVid loop on generated scenes under `tmp`, by two gloo processes."""
    data = make_street_scenes(tmp / "data", counts={"train": 16, "val": 6, "test": 6}, unlabeled=10, size=(64, 48))
    args = [f"--data_root={data}", "--device=cpu", "--pretrained=False", "--batch_size=4", "--crop_size=32",
            "--eval_batch_size=4", "--eval_each=1", "--no_iter=1", "--pseudo_epochs=1", "--pictures=0",
            f"--save_dir={tmp / 'ckpt'}", f"--run_dir={tmp / 'run'}", f"--pseudo_root={tmp / 'pseudo'}",
            "--precision=fp32", *options]  # fp32 on any CPU: the checks below recompute in fp32
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "semisup_cam.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, done


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data, done = run_two_processes(tmp, "--teacher_epochs=2", "--finetune_epochs=1")
    return tmp, data, done


def test_training_completes_and_records_are_written_once(two_process_run):
    tmp, _, _ = two_process_run
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["finished"] and len(summary["iterations"]) == 1
    lines = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = Counter((line["phase"], line["epoch"]) for line in lines)
    assert per_epoch == Counter({("teacher", 1): 1, ("teacher", 2): 1, ("it1_pseudo", 1): 1, ("it1_finetune", 1): 1})
    assert not list((tmp / "ckpt").glob("*.tmp")) and not list((tmp / "run").glob(".*.tmp"))


def test_metrics_equal_a_single_process_evaluation(two_process_run):
    tmp, data, _ = two_process_run
    checkpoint = load_checkpoint(tmp / "ckpt" / "teacher_best.pth.tar")
    model = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    load_weights(model, checkpoint, "teacher_best")
    val = load_subset("camvid", data, "val")
    cm = evaluate(model, val.batches(4), NUM_CLASSES, Runtime(torch.device("cpu")))
    assert cm.miou() == pytest.approx(checkpoint["val_iou"], abs=1e-9)
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["teacher"]["val_miou"] == pytest.approx(checkpoint["val_iou"], abs=1e-9)


def test_pseudo_labels_are_complete(two_process_run):
    tmp, data, _ = two_process_run
    frames = sorted(p.stem for p in (data / "unlabeled" / "train").glob("*.png"))
    written = sorted(p.stem for p in (tmp / "pseudo" / "train_pseudoIt1").glob("*.png"))
    assert written == frames
    for name in written:
        with Image.open(tmp / "pseudo" / "train_pseudoIt1" / f"{name}.png") as label:
            assert label.size == (64, 48) and label.mode == "L"


@pytest.mark.parametrize("schedule", ["joint", "unimatch"])
def test_the_mean_teacher_scores_as_the_weights_rank_0_saves(tmp_path, schedule):
    """Each process averages its own BatchNorm statistics into the mean teacher; evaluated unsynced,
    the shards of val would see different models and the logged score would match no checkpoint. UniMatch's
    step passes each process's model several times before one backward pass."""
    options = ["--pseudo_soft=True"] if schedule == "joint" else ["--pseudo_threshold=0.5"]
    data, _ = run_two_processes(tmp_path, "--teacher_epochs=1", f"--student_schedule={schedule}", *options,
                                "--student_init=teacher", "--pseudo_ema=0.5")

    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (logged,) = [line for line in lines if line["phase"] == f"it1_{schedule}"]
    state = load_checkpoint(tmp_path / "run" / f"last_it1_{schedule}.pth.tar")
    mean_teacher = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    mean_teacher.load_state_dict(state["mean_teacher"])
    val = load_subset("camvid", data, "val")
    cm = evaluate(mean_teacher, val.batches(4), NUM_CLASSES, Runtime(torch.device("cpu")))
    assert cm.miou() == pytest.approx(logged["mean_teacher_score"], abs=1e-9)
