"""PSEUDO_EMA: the teacher of the soft targets follows the student (Mean Teacher). The average
itself, a phase that resumes with the teacher it had, and a CamVid student whose targets come
from the moved teacher, not from the one it started with."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import semisup_cam
from data.camvid import NUM_CLASSES, STATISTICS
from models.swiftnet import swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_weights
from utils.dist import Runtime
from utils.engine import predict_probs
from utils.pseudo import MeanTeacher

from conftest import Killed, train_two_epochs


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))


def test_the_teacher_moves_towards_the_student_by_one_minus_the_momentum() -> None:
    teacher = small_net(0)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(2, 3, 5, 5))  # moves the BatchNorm statistics and counter
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    MeanTeacher(teacher, student, 0.9).update()
    after, theirs = teacher.state_dict(), student.state_dict()
    for name, old in before.items():
        if old.is_floating_point():
            torch.testing.assert_close(after[name], 0.9 * old + 0.1 * theirs[name])
            assert not torch.equal(after[name], old)
        else:
            assert torch.equal(after[name], theirs[name])  # num_batches_tracked: copied, not averaged


def train(work: Path, stop_in_epoch: int = 0) -> tuple[nn.Module, nn.Module]:
    """The student learns the mean teacher's softmax, so the teacher's state steers the run."""
    teacher, student = small_net(0), small_net(0)  # the student starts from the teacher
    with torch.no_grad():
        student[0].weight.add_(0.3)  # ... and has learned something the teacher has not

    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.rand(4, 3, 6, 6, generator=generator)
        with torch.no_grad():
            return images, teacher.eval()(images).softmax(1)

    train_two_epochs(student, batch, work, stop_in_epoch, mean_teacher=MeanTeacher(teacher, student, 0.5))
    return student, teacher


def test_a_resumed_phase_goes_on_with_the_teacher_it_had(tmp_path: Path) -> None:
    with pytest.raises(Killed):
        train(tmp_path / "killed", stop_in_epoch=2)
    assert load_checkpoint(tmp_path / "killed" / "run" / "last_it1_joint.pth.tar")["epoch"] == 1
    resumed_student, resumed_teacher = train(tmp_path / "killed")
    whole_student, whole_teacher = train(tmp_path / "whole")
    start = small_net(0).state_dict()
    for name, tensor in whole_teacher.state_dict().items():
        assert torch.equal(resumed_teacher.state_dict()[name], tensor)
        assert torch.equal(resumed_student.state_dict()[name], whole_student.state_dict()[name])
    assert not torch.equal(whole_teacher[0].weight, start["0.weight"])  # the teacher did move
    saved = load_checkpoint(tmp_path / "whole" / "run" / "last_it1_joint.pth.tar")
    assert "optimizer" not in saved  # the finished phase keeps weights only: the student's and its teacher's
    assert all(torch.equal(saved["mean_teacher"][k], v) for k, v in whole_teacher.state_dict().items())


def test_a_camvid_student_learns_from_the_teacher_that_follows_it(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], phase_batches: dict[str, Any]) -> None:
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=2,
                               pseudo_root=tmp_path / "pseudo", student_schedule="joint", pseudo_soft=True,
                               student_init="teacher", pseudo_ema=0.5, batch_size=8,
                               precision="fp32"))  # the checks below recompute in fp32
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo_ema"] == 0.5
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [0 <= m["mean_teacher_score"] <= 100 for m in lines if m["phase"] == "it1_joint"] == [True, True]
    assert all("mean_teacher_score" not in m for m in lines if m["phase"] == "teacher")

    cpu = Runtime(torch.device("cpu"))
    first, moved = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"]), swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    teacher_path, last_path = tmp_path / "ckpt" / "teacher_best.pth.tar", tmp_path / "run" / "last_it1_joint.pth.tar"
    load_weights(first, load_checkpoint(teacher_path), teacher_path)
    moved.load_state_dict(load_checkpoint(last_path)["mean_teacher"])
    crops, targets = next(phase_batches["it1_joint"](torch.Generator().manual_seed(0)))
    crops, targets = crops[4:], targets[4:]  # the pseudo-labeled half of the batch
    kept = (targets.sum(1, keepdim=True) > 0).float()  # all but the padding of crops beyond the frame
    assert kept.mean() > 0.9
    torch.testing.assert_close(targets, predict_probs(moved, crops, cpu) * kept)
    assert not torch.allclose(targets, predict_probs(first, crops, cpu) * kept, atol=1e-3)
