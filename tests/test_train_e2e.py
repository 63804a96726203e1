"""A tiny teacher run through semisup_cam.main: it learns, and it leaves the records it promises.

The run takes about 15 s on one CPU thread: 24 train images of 64x48, 15 epochs of 3 batches.
Measured with seeds 0, 1 and 2, it reaches a test mIoU of 22-25 (pixel accuracy 64-68) and
the loss falls from about 2.2 to 1.2. A constant prediction scores below 3 mIoU on this test set
and uniform guessing 100/11 = 9.1 pixel accuracy, so the thresholds below are twice chance and
still leave a margin of several points.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest
import torch

import semisup_cam
from data.camvid import CLASS_NAMES
from data.synthetic import make_street_scenes

CHANCE = 100 / 11
EPOCHS = 15
OVERRIDES = {"batch_size": 8, "crop_size": 48, "teacher_epochs": EPOCHS, "eval_each": 5, "seed": 0}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory, main_args: Callable[..., list[str]]) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("teacher_run")
    data = make_street_scenes(work / "camvid", counts={"train": 24, "val": 8, "test": 8}, unlabeled=0, size=(64, 48))
    semisup_cam.main(main_args(data, work, **OVERRIDES))
    run = work / "run"
    return {
        "work": work,
        "summary": json.loads((run / "summary.json").read_text()),
        "config": json.loads((run / "config.json").read_text()),
        "progress": json.loads((run / "progress.json").read_text())["phases"],
        "metrics": [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()],
    }


def test_one_metrics_line_per_epoch_with_validation_every_eval_each(teacher_run: dict[str, Any]) -> None:
    metrics = teacher_run["metrics"]
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    assert all(m["phase"] == "teacher" and m["iteration"] == 0 for m in metrics)
    assert [m["epoch"] for m in metrics if "score" in m] == [5, 10, 15]
    assert all(set(m["val_per_class_iou"]) == set(CLASS_NAMES) for m in metrics if "score" in m)


def test_the_loss_falls(teacher_run: dict[str, Any]) -> None:
    losses = [m["loss"] for m in teacher_run["metrics"]]
    assert losses[-1] < 0.75 * losses[0]
    assert min(losses[-3:]) < min(losses[:3])


def test_the_teacher_beats_chance(teacher_run: dict[str, Any]) -> None:
    teacher = teacher_run["summary"]["teacher"]
    assert teacher["test_miou"] > 2 * CHANCE
    assert teacher["val_miou"] > 1.5 * CHANCE  # eight validation images: a noisier number
    assert teacher["test_pixel_acc"] > 50


def test_summary_schema(teacher_run: dict[str, Any]) -> None:
    summary = teacher_run["summary"]
    assert summary["iterations"] == [] and summary["finished"] is True
    teacher = summary["teacher"]
    assert {"val_miou", "test_miou", "per_class_iou", "best_epoch"} <= set(teacher)
    assert list(teacher["per_class_iou"]) == list(CLASS_NAMES)
    assert all(v is None or 0 <= v <= 100 for v in teacher["per_class_iou"].values())
    known = [v for v in teacher["per_class_iou"].values() if v is not None]
    assert teacher["test_miou"] == pytest.approx(sum(known) / len(known), abs=1e-3)
    # The best validation score is the one reported.
    best = max(m["score"] for m in teacher_run["metrics"] if "score" in m)
    assert teacher["val_miou"] == pytest.approx(best)
    assert teacher["best_epoch"] in (5, 10, 15)
    assert isinstance(summary["timings_s"]["teacher"], float) and summary["timings_s"]["teacher"] > 0


def test_config_json_holds_the_overrides(teacher_run: dict[str, Any]) -> None:
    config = teacher_run["config"]
    work = teacher_run["work"]
    for name, value in OVERRIDES.items():
        assert config[name] == value, name
    assert config["device"] == "cpu" and config["pretrained"] is False and config["no_iter"] == 0
    assert config["save_dir"] == str(work / "ckpt") and config["run_dir"] == str(work / "run")
    # Everything else keeps the script's defaults, so the file alone says how to re-run.
    assert config["weight_decay"] == semisup_cam.WEIGHT_DECAY and config["tta_scales"] == semisup_cam.TTA_SCALES


def test_progress_records_the_finished_teacher(teacher_run: dict[str, Any]) -> None:
    teacher = teacher_run["progress"]["teacher"]
    assert teacher["epochs"] == EPOCHS
    assert teacher["best_score"] == pytest.approx(teacher_run["summary"]["teacher"]["val_miou"])


def test_best_checkpoint_has_the_thesis_fields_and_loads_weights_only(teacher_run: dict[str, Any]) -> None:
    path = teacher_run["work"] / "ckpt" / "teacher_best.pth.tar"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert {"iteration", "epoch", "state_dict", "optimizer", "val_iou", "config"} <= set(checkpoint)
    assert checkpoint["iteration"] == 0
    assert checkpoint["epoch"] == teacher_run["summary"]["teacher"]["best_epoch"]
    assert checkpoint["val_iou"] == pytest.approx(teacher_run["summary"]["teacher"]["val_miou"])
    assert checkpoint["config"] == teacher_run["config"]
    assert checkpoint["state_dict"]["logits.conv.weight"].shape[0] == len(CLASS_NAMES)
    assert "state" in checkpoint["optimizer"] and "param_groups" in checkpoint["optimizer"]


def test_the_last_checkpoint_keeps_only_the_final_weights(teacher_run: dict[str, Any]) -> None:
    last = torch.load(teacher_run["work"] / "run" / "last_teacher.pth.tar", map_location="cpu", weights_only=True)
    assert last["epoch"] == EPOCHS and "optimizer" not in last and "state_dict" in last
