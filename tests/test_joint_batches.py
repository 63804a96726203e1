"""The joint schedule's batches: how many crops each source gives, and what an epoch is."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import semisup_cam
from utils.dist import Runtime
from utils.engine import Source, batch_split, mixed_batches
from utils.errors import UserError

LABELED, PSEUDO = 23, 344  # the 1/16 split of CamVid's 367 train images


def tagged(size: int, tag: int) -> Source:
    """A source whose batches carry their indices as images and `tag` as every label."""
    return Source(size, lambda index, generator: (index.float(), torch.full_like(index, tag)))


@pytest.mark.parametrize("batch_size, shares, counts", [
    (8, [0.5, 0.5], [4, 4]),
    (8, [0.25, 0.75], [2, 6]),
    (12, [0.25, 0.75], [3, 9]),
    (8, [0.01, 0.99], [1, 7]),
    (8, [0.99, 0.01], [7, 1]),
    (8, [1.0], [8]),
])
def test_batch_split_rounds_the_shares_and_keeps_one_crop_of_each_source(batch_size: int, shares: list[float],
                                                                        counts: list[int]) -> None:
    assert batch_split(batch_size, shares) == counts


def _one_epoch(shares: list[float] | None, cpu: Runtime) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    steps, batches = mixed_batches([tagged(LABELED, 0), tagged(PSEUDO, 1)], 8, cpu, shares)
    return steps, list(batches(torch.Generator().manual_seed(0)))


def test_each_batch_takes_the_labeled_share_and_an_epoch_is_one_pass_over_the_frames(cpu: Runtime) -> None:
    steps, epoch = _one_epoch([0.25, 0.75], cpu)
    assert steps == len(epoch) == PSEUDO // 6
    for _, labels in epoch:
        assert labels.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    frames = torch.cat([images[2:] for images, _ in epoch]).long()
    assert len(frames.unique()) == len(frames) == steps * 6  # every frame once, the last incomplete batch dropped
    labeled = torch.cat([images[:2] for images, _ in epoch]).long()
    assert len(labeled.unique()) == LABELED  # the small set is cycled, all of it


def test_without_shares_a_batch_is_half_and_half(cpu: Runtime) -> None:
    steps, epoch = _one_epoch(None, cpu)
    assert steps == PSEUDO // 4
    assert all(labels.tolist() == [0] * 4 + [1] * 4 for _, labels in epoch)


def test_every_process_gets_crops_of_both_kinds_or_the_split_is_refused() -> None:
    sources = [tagged(LABELED, 0), tagged(PSEUDO, 1)]
    for rank in range(2):
        steps, batches = mixed_batches(sources, 8, Runtime(torch.device("cpu"), rank=rank, world=2), [0.25, 0.75])
        _, labels = next(batches(torch.Generator().manual_seed(0)))
        assert labels.tolist() == [0, 1, 1, 1]
    with pytest.raises(UserError, match=r"batch of 8 \(2 \+ 6 crops.*4 processes.*--joint_labeled_share"):
        mixed_batches(sources, 8, Runtime(torch.device("cpu"), rank=0, world=4), [0.25, 0.75])


@pytest.mark.parametrize("share", [0.0, 1.0, 1.5])
def test_a_labeled_share_without_both_kinds_of_crops_is_refused(tmp_path: Path, main_args: Callable[..., list[str]],
                                                                share: float) -> None:
    with pytest.raises(UserError, match=f"--joint_labeled_share={share}: .* between 0 and 1"):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, no_iter=1, student_schedule="joint",
                                   joint_labeled_share=share))
    assert not (tmp_path / "run").exists()
