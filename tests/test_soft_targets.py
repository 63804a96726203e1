"""PSEUDO_SOFT: the student learns the teacher's softmax. The loss against distributions, the
targets of labeled and pseudo-labeled crops, CutMix on distributions, and a CamVid student whose
joint batches carry exactly its teacher's softmax."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import semisup_cam
from data.camvid import IGNORE_INDEX, NUM_CLASSES, STATISTICS
from data.transforms import cutmix
from models.swiftnet import swiftnet_rn18
from utils.checkpoint import load_checkpoint, load_weights
from utils.dist import Runtime
from utils.engine import cross_entropy, predict_probs
from utils.pseudo import soft_targets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels_with_void(seed: int, shape: tuple[int, ...] = (3, 5, 7)) -> torch.Tensor:
    labels = torch.randint(0, NUM_CLASSES, shape, generator=gen(seed))
    return labels.masked_fill(torch.rand(shape, generator=gen(seed + 1)) < 0.3, IGNORE_INDEX)


def test_one_hot_targets_give_the_loss_of_the_class_indices(cpu: Runtime) -> None:
    labels = labels_with_void(0)
    logits = torch.randn(3, NUM_CLASSES, 5, 7, generator=gen(2))
    one_hot = soft_targets(labels, NUM_CLASSES, IGNORE_INDEX, cpu)
    assert one_hot.shape == logits.shape
    assert torch.equal(one_hot.sum(1), (labels != IGNORE_INDEX).float())  # void: an all-zero distribution
    assert torch.equal(one_hot.argmax(1)[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    torch.testing.assert_close(cross_entropy(logits, one_hot), cross_entropy(logits, labels, IGNORE_INDEX))


def test_an_all_void_batch_of_distributions_costs_nothing(cpu: Runtime) -> None:
    logits = torch.randn(2, NUM_CLASSES, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, soft_targets(torch.full((2, 4, 4), IGNORE_INDEX), NUM_CLASSES, IGNORE_INDEX, cpu))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_the_soft_loss_pulls_the_student_towards_the_teachers_softmax() -> None:
    logits = torch.randn(2, NUM_CLASSES, 3, 3, generator=gen(0), requires_grad=True)
    teacher = torch.randn(2, NUM_CLASSES, 3, 3, generator=gen(1)).softmax(1)
    teacher[0, :, 0, 0] = 0  # one ignored pixel
    cross_entropy(logits, teacher).backward()
    kept = teacher.sum(1, keepdim=True)
    expected = (logits.detach().softmax(1) - teacher) * kept / kept.sum()
    torch.testing.assert_close(logits.grad, expected)
    matched = logits.detach().softmax(1).requires_grad_(False)
    student = logits.detach().clone().requires_grad_(True)
    cross_entropy(student, matched).backward()
    torch.testing.assert_close(student.grad, torch.zeros_like(student), atol=1e-7, rtol=0)


def test_pseudo_targets_are_the_teachers_softmax_on_the_same_images(cpu: Runtime) -> None:
    torch.manual_seed(0)
    teacher = nn.Conv2d(3, NUM_CLASSES, 3, padding=1)
    images = torch.rand(3, 3, 5, 7, generator=gen(3)) * 255
    labels = labels_with_void(4)
    targets = soft_targets(labels, NUM_CLASSES, IGNORE_INDEX, cpu, teacher, images)
    kept = (labels != IGNORE_INDEX).unsqueeze(1)
    with torch.no_grad():
        torch.testing.assert_close(targets, teacher(images).softmax(1) * kept)
    assert not targets.is_inference()  # the loss can keep it for the backward pass


def test_cutmix_moves_distributions_with_their_image() -> None:
    b, h, w = 6, 20, 24
    images = torch.arange(b, dtype=torch.float).view(b, 1, 1, 1).expand(b, 3, h, w) * 10
    targets = F.one_hot(torch.arange(b).view(b, 1, 1).expand(b, h, w), NUM_CLASSES).movedim(-1, 1).float()
    out_images, out_targets = cutmix(images, targets, gen(0), p=1.0)
    source = (out_images[:, 0] / 10).round().long()
    assert (source != torch.arange(b).view(b, 1, 1)).any()
    assert torch.equal(out_targets.argmax(1), source) and torch.equal(out_targets.sum(1), torch.ones(b, h, w))


def test_a_soft_camvid_student_learns_from_its_teachers_softmax(scenes8: Path, tmp_path: Path,
                                                                main_args: Callable[..., list[str]],
                                                                phase_batches: dict[str, Any]) -> None:
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=1,
                               pseudo_root=tmp_path / "pseudo", student_schedule="joint", pseudo_threshold=0.3,
                               pseudo_soft=True, batch_size=8, precision="fp32"))  # the check recomputes in fp32
    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo_soft"] is True
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    assert entry["pseudo_ignored_frac"] > 0  # the threshold left some pixels out

    assert set(phase_batches) == {"teacher", "it1_joint"}
    _, hard = next(phase_batches["teacher"](gen(0)))
    assert hard.dtype == torch.long  # the teacher learns from the labels as they are
    cpu = Runtime(torch.device("cpu"))
    teacher = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    path = tmp_path / "ckpt" / "teacher_best.pth.tar"
    load_weights(teacher, load_checkpoint(path), path)
    pseudo_crops, pseudo_targets = [], []
    for seed in range(4):  # a few batches, so that some pseudo-labeled crop holds the threshold's Void
        crops, targets = next(phase_batches["it1_joint"](gen(seed)))
        one_hot = targets[:4]  # the labeled half of the batch
        assert one_hot.dtype == torch.float and set(one_hot.sum(1).unique().tolist()) <= {0.0, 1.0}
        assert set(one_hot.unique().tolist()) <= {0.0, 1.0}
        pseudo_crops.append(crops[4:])
        pseudo_targets.append(targets[4:])
    crops, targets = torch.cat(pseudo_crops), torch.cat(pseudo_targets)
    kept = targets.sum(1) > 0
    assert kept.any() and not kept.all()  # the threshold's Void stays out of the loss
    expected = predict_probs(teacher, crops, cpu)
    torch.testing.assert_close(targets, expected * kept.unsqueeze(1))
