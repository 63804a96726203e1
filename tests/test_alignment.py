"""PSEUDO_ALIGN: the soft targets' class mean is pulled to the labeled set's (ReMixMatch's distribution
alignment). The alignment itself, a phase that resumes with the running mean it had, and a CamVid
student whose targets are the aligned softmax of its teacher."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import semisup_cam
from data.camvid import STATISTICS, load_labels
from data.classes import NUM_CLASSES
from models.swiftnet import swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_weights
from utils.dist import Runtime
from utils.engine import Best, DistributionAlignment, Phase, fit, predict_probs
from utils.errors import UserError
from utils.records import Run

from conftest import Killed, two_epoch_phase


def pixels_like(probs: list[float], b: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    """A batch (B,C,H,W) whose every pixel has the distribution `probs`."""
    return torch.tensor(probs).view(1, -1, 1, 1).expand(b, -1, h, w).clone()


def test_each_batch_moves_the_running_mean_and_is_scaled_by_the_prior_over_it(cpu: Runtime) -> None:
    align = DistributionAlignment(torch.tensor([600, 300, 100]), cpu)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]]).repeat(100, 1)[:, :, None, None]
    keep = torch.ones(len(probs), 1, 1, 1, dtype=torch.bool)
    prior = torch.tensor([601, 301, 101]) / 1003
    align.running = prior.clone()
    aligned = align(probs, keep)
    torch.testing.assert_close(aligned.sum(1), torch.ones(len(probs), 1, 1))
    # The running mean moved by 1% towards these targets' mean, so the correction is 1% of the mismatch.
    expected_running = prior.lerp(probs.mean((0, 2, 3)), 0.01)
    torch.testing.assert_close(align.running, expected_running)
    scaled = probs * (prior / expected_running).view(1, 3, 1, 1)
    torch.testing.assert_close(aligned, scaled / scaled.sum(1, keepdim=True))


def test_a_class_the_teacher_drifts_away_from_gets_its_share_back(cpu: Runtime) -> None:
    """The teacher gives class 1 a quarter of every pixel where the labels give it half: after many
    batches the running mean has learned that, and the aligned targets give class 1 half again."""
    align = DistributionAlignment(torch.tensor([5000, 5000]), cpu)
    probs = pixels_like([0.75, 0.25])
    keep = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    first = align(probs, keep)
    assert 0.25 < first[0, 1, 0, 0] < 0.26  # at first the running mean is the prior: almost no correction
    for _ in range(2000):
        aligned = align(probs, keep)
    torch.testing.assert_close(align.running, torch.tensor([0.75, 0.25]), atol=1e-4, rtol=0)
    torch.testing.assert_close(aligned, pixels_like([0.5, 0.5]), atol=1e-4, rtol=0)


def test_ignored_pixels_neither_count_nor_change(cpu: Runtime) -> None:
    align = DistributionAlignment(torch.tensor([1, 1]), cpu)
    probs = pixels_like([0.5, 0.5])
    probs[:, :, 0] = torch.tensor([0.0, 1.0]).view(1, 2, 1)  # the first row: all class 1, but ignored
    keep = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    keep[:, :, 0] = False
    align(probs, keep)
    torch.testing.assert_close(align.running, torch.tensor([0.5, 0.5]))  # only the kept pixels counted
    before = align.running.clone()
    align(probs, torch.zeros_like(keep))  # an all-ignored batch (a high threshold) leaves the mean alone
    torch.testing.assert_close(align.running, before)


def test_classification_targets_are_aligned_per_sample(cpu: Runtime) -> None:
    align = DistributionAlignment(torch.tensor([10, 30]), cpu)
    align.running = torch.tensor([0.5, 0.5])
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    aligned = align(probs, torch.ones(2, 1, dtype=torch.bool))
    ratio = (torch.tensor([11, 31]) / 42) / align.running
    torch.testing.assert_close(aligned, probs * ratio / (probs * ratio).sum(1, keepdim=True))
    assert aligned[0, 1] > 0.7  # an undecided sample leans to the class the labels hold three times as often


def aligning_phase(alignment: DistributionAlignment, stop_in_epoch: int = 0) -> Phase:
    """Targets aligned by `alignment`, so its running mean steers the run."""

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.rand(4, 3, 6, 6, generator=generator)
        probs = torch.rand(4, 3, 6, 6, generator=generator).softmax(1)
        return images, alignment(probs, torch.ones(4, 1, 6, 6, dtype=torch.bool))

    alignment.momentum = 0.5  # moves visibly in six steps
    return two_epoch_phase(batch, stop_in_epoch, alignment=alignment)


def train(work: Path, stop_in_epoch: int = 0) -> tuple[nn.Module, DistributionAlignment]:
    cpu = Runtime(torch.device("cpu"))
    torch.manual_seed(0)
    student = nn.Conv2d(3, 3, 1)
    alignment = DistributionAlignment(torch.tensor([70, 20, 10]), cpu)
    run = Run(work / "run", {"run_dir": str(work / "run"), "resume": True})
    fit(student, aligning_phase(alignment, stop_in_epoch), Best(work / "best.pth.tar", "val_iou"), run, cpu,
        lambda model: (0.0, {}), 1)
    return student, alignment


def test_a_resumed_phase_goes_on_with_the_running_mean_it_had(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        train(tmp_path / "killed", stop_in_epoch=2)
    resumed_student, resumed = train(tmp_path / "killed")
    whole_student, whole = train(tmp_path / "whole")
    assert not torch.allclose(whole.running, whole.prior)  # the mean did move
    torch.testing.assert_close(resumed.running, whole.running, rtol=0, atol=0)
    torch.testing.assert_close(resumed_student.weight, whole_student.weight, rtol=0, atol=0)


def test_alignment_needs_soft_targets(scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    with pytest.raises(UserError, match="pseudo_soft"):
        semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_align=True))
    assert not (tmp_path / "run" / "config.json").exists()  # refused before the run was recorded


def test_a_camvid_student_learns_the_aligned_softmax_of_its_teacher(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], segmentation_sources: list[Any]) -> None:
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=2,
                               pseudo_root=tmp_path / "pseudo", student_schedule="joint", pseudo_soft=True,
                               pseudo_align=True))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo_align"] is True
    running = load_checkpoint(tmp_path / "run" / "last_it1_joint.pth.tar")["alignment"]["running"]

    labeled_names = json.loads((tmp_path / "run" / "split.json").read_text())["labeled"]
    labels = load_labels([scenes8 / "train_labels" / f"{n}.png" for n in labeled_names], 1.0)
    counts = torch.bincount(labels[labels < NUM_CLASSES].long(), minlength=NUM_CLASSES) + 1
    prior = counts / counts.sum()
    assert not torch.allclose(running, prior)  # the teacher's predictions moved it

    cpu = Runtime(torch.device("cpu"))
    teacher = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    path = tmp_path / "ckpt" / "teacher_best.pth.tar"
    load_weights(teacher, load_checkpoint(path), path)
    _, (labeled, pseudo) = segmentation_sources
    _, one_hot = labeled.augment(torch.arange(2), torch.Generator().manual_seed(0))
    assert set(one_hot.unique().tolist()) <= {0.0, 1.0}  # labeled crops are not aligned
    # A batch drawn now is aligned by the running mean as it was at the end, moved once more by this batch.
    align = DistributionAlignment(counts - 1, cpu)
    align.running = running.clone()
    crops, targets = pseudo.augment(torch.arange(pseudo.size), torch.Generator().manual_seed(0))
    kept = (targets.sum(1, keepdim=True) > 0)
    expected = align(predict_probs(teacher, crops, cpu), kept) * kept
    torch.testing.assert_close(targets, expected)
    assert not torch.allclose(targets, predict_probs(teacher, crops, cpu) * kept, atol=1e-3)
