"""Both experiments end to end with every self-training option on at once: they run, record their
options, and give the student the batches those options ask for."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

import semisup_cam
import semisup_cif
from data.camvid import IGNORE_INDEX
from data.synthetic import make_cifar_like, make_street_scenes
from utils import engine
from utils.pseudo import RELIABILITY, most_reliable, pseudo_folder

from conftest import TINY_SIZE

EVERY_OPTION = {"student_schedule": "joint", "joint_labeled_share": 0.25, "pseudo_threshold": 0.6,
                "strong_aug": True, "pseudo_soft": True, "student_init": "teacher", "pseudo_ema": 0.9}


def record_batch_plans(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[tuple[list[int], list[float]]]:
    """The set sizes and shares of every phase a script plans, the plans themselves unchanged."""
    plans: list[tuple[list[int], list[float]]] = []

    def recording(sizes: list[int], batch_size: int, rt: Any, shares: Any = (1.0,)) -> Any:
        plans.append((list(sizes), list(shares)))
        return engine.batch_plan(sizes, batch_size, rt, shares)

    monkeypatch.setattr(module, "batch_plan", recording)
    return plans


def test_every_camvid_option_at_once(tmp_path: Path, main_args: Callable[..., list[str]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    plans = record_batch_plans(monkeypatch, semisup_cam)
    data = make_street_scenes(tmp_path / "camvid", counts={"train": 8, "val": 2, "test": 2}, unlabeled=0,
                              size=TINY_SIZE)
    semisup_cam.main(main_args(data, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=1,
                               pseudo_root=tmp_path / "pseudo", pseudo_tta=True, tta_scales="0.5,1.0",
                               pseudo_image_share=0.5, **EVERY_OPTION))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {name: config[name] for name in EVERY_OPTION} == EVERY_OPTION and config["pseudo_tta"] is True
    assert config["pseudo_image_share"] == 0.5
    assert plans == [([4], [1.0]), ([4, 2], [0.25, 0.75])]  # the teacher; the joint student on the surer 2 frames
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    folder = pseudo_folder(tmp_path / "pseudo", 1)
    assert len(list(folder.glob("*.png"))) == 4 and entry["pseudo_frames"] == 2  # 4 unlabeled, the surer half
    kept = most_reliable(json.loads((folder / RELIABILITY).read_text())["reliability"], 0.5)
    stored = np.stack([np.array(Image.open(folder / f"{name}.png")) for name in sorted(kept)])
    assert entry["pseudo_ignored_frac"] == pytest.approx((stored == IGNORE_INDEX).mean() * 100, abs=0.01)


def test_every_cifar_option_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = record_batch_plans(monkeypatch, semisup_cif)
    root = make_cifar_like(tmp_path / "cifar", n_train=200, n_test=40)
    settings = {"data_root": root, "device": "cpu", "width": 8, "val_size": 20, "batch_size": 16,
                "labeled_fraction": 0.25, "teacher_epochs": 1, "no_iter": 1, "pseudo_epochs": 1,
                "finetune_epochs": 1, "save_dir": tmp_path / "ckpt", "run_dir": tmp_path / "run", **EVERY_OPTION,
                "pseudo_threshold": 0.112}
    semisup_cif.main([f"--{name}={value}" for name, value in settings.items()])
    entry: dict[str, Any] = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    # An untrained teacher is about 0.11 sure of every image: the threshold keeps some and leaves out others.
    assert 0 < entry["pseudo_kept_frac"] < 100
    kept = round(entry["pseudo_kept_frac"] / 100 * 130)  # 200 - 50 labeled - 20 val
    assert plans == [([50], [1.0]), ([50, kept], [0.25, 0.75])]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {name: config[name] for name in EVERY_OPTION} == {**EVERY_OPTION, "pseudo_threshold": 0.112}
