"""The joint schedule's batches: how many crops each set gives, what an epoch is, and what each process gets."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import semisup_cam
from data.camvid import CLASSES, IGNORE_INDEX
from data.segmentation import SegmentationSet
from utils.config import Config
from utils.dist import Runtime
from utils.engine import batch_plan, batch_split, endless_batches
from utils.errors import UserError

LABELED, PSEUDO = 23, 344  # the 1/16 split of CamVid's 367 train images


@pytest.mark.parametrize("batch_size, shares, counts", [
    (8, [0.5, 0.5], [4, 4]),
    (8, [0.25, 0.75], [2, 6]),
    (12, [0.25, 0.75], [3, 9]),
    (8, [0.01, 0.99], [1, 7]),
    (8, [0.99, 0.01], [7, 1]),
    (8, [1.0], [8]),
])
def test_batch_split_rounds_the_shares_and_keeps_one_crop_of_each_set(batch_size: int, shares: list[float],
                                                                     counts: list[int]) -> None:
    assert batch_split(batch_size, shares) == counts


def test_an_epoch_is_one_pass_over_the_frames_and_the_small_set_is_cycled(cpu: Runtime) -> None:
    counts, steps = batch_plan([LABELED, PSEUDO], 8, cpu, [0.25, 0.75])
    assert counts == [2, 6] and steps == PSEUDO // 6
    generator = torch.Generator().manual_seed(0)
    labeled_ids, pseudo_ids = endless_batches(LABELED, 2, generator, cpu), endless_batches(PSEUDO, 6, generator, cpu)
    labeled, frames = zip(*[(next(labeled_ids), next(pseudo_ids)) for _ in range(steps)])
    frames = torch.cat(frames)
    assert len(frames.unique()) == len(frames) == steps * 6  # every frame once, the last incomplete batch dropped
    assert len(torch.cat(labeled).unique()) == LABELED  # the small set is cycled, all of it


def test_without_shares_a_single_set_fills_the_batch(cpu: Runtime) -> None:
    assert batch_plan([PSEUDO], 8, cpu) == ([8], PSEUDO // 8)
    assert batch_plan([5], 8, cpu) == ([8], 1)  # a set smaller than a batch: one batch of all of it


def test_every_process_gets_crops_of_both_kinds_or_the_split_is_refused() -> None:
    for rank in range(2):
        rt = Runtime(torch.device("cpu"), rank=rank, world=2)
        counts, _ = batch_plan([LABELED, PSEUDO], 8, rt, [0.25, 0.75])
        generator = torch.Generator().manual_seed(0)
        assert [len(next(endless_batches(size, count, generator, rt)))
                for size, count in zip([LABELED, PSEUDO], counts)] == [1, 3]
    with pytest.raises(UserError, match=r"batch of 8 \(2 \+ 6 crops.*4 processes.*--joint_labeled_share"):
        batch_plan([LABELED, PSEUDO], 8, Runtime(torch.device("cpu"), rank=0, world=4), [0.25, 0.75])


def test_an_empty_set_is_refused(cpu: Runtime) -> None:
    with pytest.raises(UserError, match="empty"):
        batch_plan([LABELED, 0], 8, cpu, [0.5, 0.5])


def uniform_set(count: int, label: int) -> SegmentationSet:
    return SegmentationSet(torch.full((count, 3, 16, 16), 100, dtype=torch.uint8),
                           torch.full((count, 16, 16), label, dtype=torch.uint8),
                           [f"{label}_{i}" for i in range(count)], torch.tensor([[16, 16]] * count),
                           [(16, 16)] * count)


def test_each_joint_batch_holds_the_labeled_crops_first_then_the_pseudo_labeled_ones(cpu: Runtime) -> None:
    cfg = Config(crop_size=16, normalization="dataset", pseudo_soft=False, strong_aug=False)
    counts, steps = batch_plan([LABELED, PSEUDO], 8, cpu, [0.25, 0.75])
    batches = list(semisup_cam.joint_batches(uniform_set(LABELED, 0), uniform_set(PSEUDO, 1), counts, steps,
                                             torch.Generator().manual_seed(0), CLASSES, cfg, cpu, teacher=None))
    assert len(batches) == steps
    for images, labels in batches:
        assert images.shape == (8, 3, 16, 16)
        for crop, label in enumerate(labels):  # padding beyond a scaled-down image is Void
            assert set(label.unique().tolist()) <= {0 if crop < 2 else 1, IGNORE_INDEX}
        assert (labels[:2] == 0).any() and (labels[2:] == 1).any()


@pytest.mark.parametrize("share", [0.0, 1.0, 1.5])
def test_a_labeled_share_without_both_kinds_of_crops_is_refused(tmp_path: Path, main_args: Callable[..., list[str]],
                                                                share: float) -> None:
    with pytest.raises(UserError, match=f"--joint_labeled_share={share}: .* between 0 and 1"):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, no_iter=1, student_schedule="joint",
                                   joint_labeled_share=share))
    assert not (tmp_path / "run").exists()
