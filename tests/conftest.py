"""Shared fixtures: a CPU runtime and tiny generated CamVid-layout data sets."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

import semisup_cam
from data.synthetic import make_street_scenes
from utils.dist import Runtime
from utils.engine import Batch, Best, cross_entropy, fit
from utils.pseudo import MeanTeacher
from utils.records import Run

TINY_SIZE = (64, 48)  # width, height: the smallest scenes that still look like streets

# On a small shared CPU, intra-op threads spin against each other and against other processes:
# one thread makes the training tests several times faster, and their numbers reproducible.
torch.set_num_threads(1)


@pytest.fixture
def cpu() -> Runtime:
    return Runtime(torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only CamVid layout: 4 train, 2 val, 2 test images and 3 unlabeled frames, 64x48."""
    root = tmp_path_factory.mktemp("tiny_scenes")
    return make_street_scenes(root, counts={"train": 4, "val": 2, "test": 2}, unlabeled=3, size=TINY_SIZE)


@pytest.fixture
def scenes(tiny_scenes: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_scenes` that a test may damage."""
    return Path(shutil.copytree(tiny_scenes, tmp_path / "camvid"))


@pytest.fixture(scope="session")
def scenes8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only CamVid layout of 8 train, 2 val and 2 test images, no frames: with LABELED_FRACTION=1/2,
    4 labeled images and 4 unlabeled ones."""
    root = tmp_path_factory.mktemp("scenes8")
    return make_street_scenes(root, counts={"train": 8, "val": 2, "test": 2}, unlabeled=0, size=TINY_SIZE)


@pytest.fixture
def phase_batches(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The `batches` function of every phase semisup_cam trains, by phase name, the training unchanged:
    calling one again with a generator gives that phase's batches, targets included."""
    phases: dict[str, Any] = {}
    train = semisup_cam.train

    def recording(model: Any, phase: str, iteration: int, batches: Any, *args: Any, **kwargs: Any) -> Any:
        phases[phase] = batches
        return train(model, phase, iteration, batches, *args, **kwargs)

    monkeypatch.setattr(semisup_cam, "train", recording)
    return phases


@pytest.fixture(scope="session")
def main_args() -> Callable[..., list[str]]:
    """Command line for semisup_cam.main: tiny CPU settings, run and checkpoints under `work`."""

    def build(data_root: Path, work: Path, **overrides: object) -> list[str]:
        settings = {"data_root": data_root, "device": "cpu", "pretrained": False, "batch_size": 4,
                    "crop_size": 32, "eval_batch_size": 8, "teacher_epochs": 1, "eval_each": 1, "no_iter": 0,
                    "save_dir": work / "ckpt", "run_dir": work / "run"}
        settings.update(overrides)
        return [f"--{name}={value}" for name, value in settings.items()]

    return build


# What fit reads from a run's config.
FIT_CONFIG = {"seed": 0, "lr_min": 0.0, "eval_each": 1}


def supervised(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The plain training step: cross-entropy against the batch's targets."""
    return cross_entropy(model(batch[0]), batch[1]), {}


class Killed(Exception):
    """Stands for the process being killed in the middle of an epoch."""


def train_two_epochs(model: torch.nn.Module, make_batch: Callable[[torch.Generator], Batch], work: Path,
                     stop_in_epoch: int = 0, mean_teacher: MeanTeacher | None = None) -> None:
    """A student phase of two epochs of 3 steps of `make_batch` with SGD, killed in epoch `stop_in_epoch` (if
    any), its run directory under `work`: for tests that a resumed phase ends as an uninterrupted one."""
    epochs_started = []

    def batches(generator: torch.Generator) -> Iterator[Batch]:
        epochs_started.append(1)
        for _ in range(3):
            if len(epochs_started) == stop_in_epoch:
                raise Killed
            yield make_batch(generator)

    run = Run(work / "run", {"run_dir": str(work / "run"), "resume": True, **FIT_CONFIG})
    fit(model, "it1_joint", 1, batches, 3, 2, supervised, torch.optim.SGD(model.parameters(), lr=0.5),
        Best(work / "best.pth.tar", "val_iou"), lambda m: (0.0, {}), run, Runtime(torch.device("cpu")),
        after_step=mean_teacher.update if mean_teacher else None,
        beside={"mean_teacher": mean_teacher.model} if mean_teacher else None)
