"""Shared fixtures: a CPU runtime and tiny generated CamVid-layout data sets."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from data.synthetic import make_street_scenes
from utils.dist import Runtime
from utils.engine import Batch, Phase, cross_entropy, mixed_batches

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
def segmentation_sources(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The `sources` of every phase the CamVid loop builds (each mixed_batches call), the calls unchanged."""
    calls: list[Any] = []

    def recording(sources: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(sources)
        return mixed_batches(sources, *args, **kwargs)

    monkeypatch.setattr("utils.segmentation.mixed_batches", recording)
    return calls


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


class Killed(Exception):
    """Stands for the process being killed in the middle of an epoch."""


def two_epoch_phase(make_batch: Callable[[torch.Generator], Batch], stop_in_epoch: int = 0,
                    **fields: Any) -> Phase:
    """A student phase of two epochs of 3 steps of `make_batch` with SGD, killed in epoch `stop_in_epoch` (if
    any): for tests that a resumed phase ends as an uninterrupted one."""
    epochs_started = []

    def batches(generator: torch.Generator) -> Iterator[Batch]:
        epochs_started.append(1)
        for _ in range(3):
            if len(epochs_started) == stop_in_epoch:
                raise Killed
            yield make_batch(generator)

    return Phase(name="it1_joint", iteration=1, epochs=2, steps_per_epoch=3, batches=batches,
                 loss_fn=lambda logits, target: cross_entropy(logits, target),
                 make_optimizer=lambda params: torch.optim.SGD(params, lr=0.5), lr_min=0.0, seed=0, **fields)
