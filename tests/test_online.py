"""The online students, FixMatch and UniMatch: their steps equal the reference loops (UniMatch's unimatch.py and
fixmatch.py; FixMatch-pytorch's train.py), and the parts that define them hold: targets from the weak view without
gradient, pasted with the same CutMix box as the pixels they label, nothing from pixels below the threshold, the
feature perturbation in training only; and a run of them trains, writes no pseudo-labels and resumes bit-identically."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semisup_cam
import semisup_cif
from data.camvid import CLASSES
from data.synthetic import make_cifar_like
from data.transforms import cutmix_box
from models.resnet_cifar import ResNet18
from models.swiftnet import swiftnet_rn18
from utils.config import Config
from utils.errors import UserError
from utils.pseudo import MeanTeacher

from conftest import Killed

IGNORE = CLASSES.ignore_index
CROP = 64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def settings(schedule: str, threshold: float, weight: float = 1.0) -> Config:
    return Config(student_schedule=schedule, pseudo_threshold=threshold, unlabeled_weight=weight)


def segmentation_batch(seed: int, labeled: int = 2, unlabeled: int = 2, views: int = 2) -> dict[str, Any]:
    """A batch as online_batches gives it: random crops, a padded strip, a CutMix box in every strong view."""
    g = gen(seed)

    def images(n: int) -> torch.Tensor:
        return torch.rand(n, 3, CROP, CROP, generator=g) * 255

    padded = torch.zeros(unlabeled, CROP, CROP, dtype=torch.bool)
    padded[:, :, -8:] = True  # the crop left the image on the right
    labels = torch.randint(0, CLASSES.num_classes, (labeled, CROP, CROP), generator=g)
    labels[:, :4] = IGNORE
    return {"images": images(labeled), "labels": labels, "weak": images(unlabeled), "padded": padded,
            "strong": [images(unlabeled) for _ in range(views)],
            "boxes": [cutmix_box(unlabeled, CROP, CROP, g, p=1.0) for _ in range(views)],
            "weak_mix": images(unlabeled), "padded_mix": torch.flip(padded, [2]),
            "strong_mix": [images(unlabeled) for _ in range(views)]}


class PixelModel(nn.Module):
    """Logits from each pixel's colour alone, no BatchNorm: a target can be traced to the pixel it came from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CLASSES.num_classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen(0)) * 4)

    def forward(self, images: torch.Tensor, perturbed: bool = False) -> Any:
        logits = self.conv(images.float() / 255)
        if perturbed:
            return logits, self.conv(F.dropout2d(images.float() / 255, 0.5, self.training))
        return logits


# ----------------------------------------------------------------------------- the references

def unimatch_reference(model: nn.Module, batch: dict[str, Any], threshold: float, fixmatch: bool) -> torch.Tensor:
    """The body of UniMatch's training loop (unimatch.py; fixmatch.py without the second view and the perturbed
    branch), in its own order and tensor operations, with ignore masks of 255 where a crop padded."""
    img_x, mask_x, img_u_w = batch["images"], batch["labels"], batch["weak"]
    ignore_mask = batch["padded"].long() * 255
    ignore_mask_mix = batch["padded_mix"].long() * 255
    with torch.no_grad():
        model.eval()
        pred_u_w_mix = model(batch["weak_mix"]).detach()
        conf_u_w_mix = pred_u_w_mix.softmax(dim=1).max(dim=1)[0]
        mask_u_w_mix = pred_u_w_mix.argmax(dim=1)
    img_u_s = [s.clone() for s in batch["strong"]]
    for img, mix, box in zip(img_u_s, batch["strong_mix"], batch["boxes"]):
        img[box.unsqueeze(1).expand(img.shape)] = mix[box.unsqueeze(1).expand(img.shape)]
    model.train()
    num_lb, num_ulb = img_x.shape[0], img_u_w.shape[0]
    if fixmatch:
        pred_x, pred_u_w = model(torch.cat((img_x, img_u_w))).split([num_lb, num_ulb])
        preds_s = [model(img_u_s[0])]
    else:
        preds, preds_fp = model(torch.cat((img_x, img_u_w)), perturbed=True)
        pred_x, pred_u_w = preds.split([num_lb, num_ulb])
        pred_u_w_fp = preds_fp[num_lb:]
        preds_s = model(torch.cat(img_u_s)).chunk(2)
    pred_u_w = pred_u_w.detach()
    conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
    mask_u_w = pred_u_w.argmax(dim=1)
    criterion_u = nn.CrossEntropyLoss(reduction="none")
    losses_s = []
    for pred_u_s, box in zip(preds_s, batch["boxes"]):
        mask_cutmixed, conf_cutmixed, ignore_cutmixed = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
        mask_cutmixed[box == 1] = mask_u_w_mix[box == 1]
        conf_cutmixed[box == 1] = conf_u_w_mix[box == 1]
        ignore_cutmixed[box == 1] = ignore_mask_mix[box == 1]
        loss_u_s = criterion_u(pred_u_s, mask_cutmixed) * ((conf_cutmixed >= threshold) & (ignore_cutmixed != 255))
        losses_s.append(loss_u_s.sum() / (ignore_cutmixed != 255).sum().item())
    loss_x = nn.CrossEntropyLoss(ignore_index=IGNORE)(pred_x, mask_x)
    if fixmatch:
        return (loss_x + losses_s[0]) / 2.0
    loss_u_w_fp = criterion_u(pred_u_w_fp, mask_u_w) * ((conf_u_w >= threshold) & (ignore_mask != 255))
    loss_u_w_fp = loss_u_w_fp.sum() / (ignore_mask != 255).sum().item()
    return (loss_x + losses_s[0] * 0.25 + losses_s[1] * 0.25 + loss_u_w_fp * 0.5) / 2.0


@pytest.mark.parametrize("schedule", ["fixmatch", "unimatch"])
def test_the_step_equals_unimatchs_loop_in_loss_gradients_and_batchnorm_statistics(schedule: str) -> None:
    torch.manual_seed(0)
    ours = swiftnet_rn18(CLASSES.num_classes, CLASSES.mean, CLASSES.std)
    reference = copy.deepcopy(ours)
    batch = segmentation_batch(0, views=1 if schedule == "fixmatch" else 2)
    step = semisup_cam.online_step(CLASSES, settings(schedule, 0.12), None)
    ours.train()
    torch.manual_seed(1)  # the same dropout masks for the perturbed branch
    loss, logs = step(ours, batch)
    loss.backward()
    torch.manual_seed(1)
    expected = unimatch_reference(reference, batch, 0.12, fixmatch=schedule == "fixmatch")
    expected.backward()
    assert 0 < logs["above_threshold"] < 100  # the threshold keeps some pixels and drops others
    torch.testing.assert_close(loss, expected)
    for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)
    for (name, mine), theirs in zip(ours.named_buffers(), reference.buffers()):
        torch.testing.assert_close(mine, theirs, msg=name)
    assert ours.training  # the step leaves the model training


def test_the_cifar_step_equals_fixmatchs_loop() -> None:
    torch.manual_seed(0)
    ours = ResNet18(10, (125.0,) * 3, (63.0,) * 3, width=8).train()
    reference = copy.deepcopy(ours)
    g = gen(0)
    batch = {"images": torch.rand(4, 3, 32, 32, generator=g) * 255,
             "labels": torch.randint(0, 10, (4,), generator=g),
             "weak": torch.rand(12, 3, 32, 32, generator=g) * 255,
             "strong": torch.rand(12, 3, 32, 32, generator=g) * 255}
    # kekmodel/FixMatch-pytorch train.py, on one device (no interleaving), temperature 1
    inputs_x, targets_x = batch["images"], batch["labels"]
    logits = reference(torch.cat((inputs_x, batch["weak"], batch["strong"])))
    logits_x = logits[:4]
    logits_u_w, logits_u_s = logits[4:].chunk(2)
    Lx = F.cross_entropy(logits_x, targets_x, reduction="mean")
    pseudo_label = torch.softmax(logits_u_w.detach(), dim=-1)
    max_probs, targets_u = torch.max(pseudo_label, dim=-1)
    threshold = max_probs.median().item()  # half the images above it
    mask = max_probs.ge(threshold).float()
    Lu = (F.cross_entropy(logits_u_s, targets_u, reduction="none") * mask).mean()
    expected = Lx + 2.0 * Lu
    expected.backward()
    loss, logs = semisup_cif.fixmatch_step(settings("fixmatch", threshold, 2.0), None)(ours, batch)
    loss.backward()
    assert 0 < logs["above_threshold"] < 100
    torch.testing.assert_close(loss, expected)
    for (name, mine), theirs in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, msg=name)


# ----------------------------------------------------------------------------- the defining parts

def test_a_strong_views_target_is_the_weak_prediction_at_that_pixel_after_the_same_cutmix() -> None:
    # Each strong view shows exactly the weak view it stands for, so where its target is the prediction of the
    # very pixel it shows, the loss at a pixel is -log(that prediction's confidence); a box pasted into the image
    # but not into the targets (or the other way round) would pair a pixel with another pixel's target.
    model = PixelModel()
    batch = segmentation_batch(1, views=1)
    batch["strong"], batch["strong_mix"] = [batch["weak"].clone()], [batch["weak_mix"].clone()]
    box = batch["boxes"][0]
    assert 0 < box.float().mean() < 1
    _, logs = semisup_cam.online_step(CLASSES, settings("fixmatch", 0.0), None)(model.train(), batch)
    confidence = torch.where(box, model(batch["weak_mix"]).softmax(1).max(1).values,
                             model(batch["weak"]).softmax(1).max(1).values)
    padded = torch.where(box, batch["padded_mix"], batch["padded"])
    expected = (-confidence.log() * ~padded).sum() / (~padded).sum()
    torch.testing.assert_close(logs["loss_strong"], expected.detach())


@pytest.mark.parametrize("schedule", ["fixmatch", "unimatch"])
def test_pixels_below_the_threshold_contribute_nothing(schedule: str) -> None:
    model = PixelModel().train()
    batch = segmentation_batch(2, views=1 if schedule == "fixmatch" else 2)
    step = semisup_cam.online_step(CLASSES, settings(schedule, 0.9), None)
    torch.manual_seed(0)
    _, logs = step(model, batch)
    box = batch["boxes"][0]
    confidence = torch.where(box, model(batch["weak_mix"]).softmax(1).max(1).values,
                             model(batch["weak"]).softmax(1).max(1).values)
    low, high = (confidence < 0.9) & ~box, (confidence >= 0.9) & ~box & ~batch["padded"]
    assert low.any() and high.any()
    changed = copy.deepcopy(batch)
    for view in changed["strong"]:
        view.copy_(torch.where(low[:, None], 255 - view, view))  # the strong view says otherwise where unsure
    torch.manual_seed(0)
    torch.testing.assert_close(step(model, changed)[1]["loss_strong"], logs["loss_strong"])
    for view in changed["strong"]:
        view.copy_(torch.where(high[:, None], 255 - view, view))  # ... and where sure
    torch.manual_seed(0)
    assert not torch.allclose(step(model, changed)[1]["loss_strong"], logs["loss_strong"])


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_the_weak_pass_gets_no_gradient(ema: float) -> None:
    model = PixelModel().train()
    mean_teacher = MeanTeacher(copy.deepcopy(model), model, ema) if ema else None
    batch = segmentation_batch(3, views=1)
    for name in ("weak", "weak_mix"):
        batch[name].requires_grad_(True)
    loss, _ = semisup_cam.online_step(CLASSES, settings("fixmatch", 0.0), mean_teacher)(model, batch)
    loss.backward()
    assert batch["weak_mix"].grad is None  # predicted without gradient
    assert batch["weak"].grad is None or not batch["weak"].grad.any()  # its predictions are targets, detached
    assert model.conv.weight.grad is not None and model.conv.weight.grad.abs().sum() > 0
    if mean_teacher is not None:
        assert all(p.grad is None for p in mean_teacher.model.parameters())
    g = gen(0)
    images, weak = torch.rand(2, 3, 32, 32, generator=g) * 255, (torch.rand(6, 3, 32, 32, generator=g) * 255)
    weak.requires_grad_(True)
    cifar_batch = {"images": images, "labels": torch.tensor([0, 1]), "weak": weak,
                   "strong": torch.rand(6, 3, 32, 32, generator=g) * 255}
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))  # no BatchNorm to couple the samples
    loss, _ = semisup_cif.fixmatch_step(settings("fixmatch", 0.0), None)(net, cifar_batch)
    loss.backward()
    assert weak.grad is None or not weak.grad.any()


def test_the_perturbation_branch_acts_only_in_training() -> None:
    torch.manual_seed(0)
    model = swiftnet_rn18(CLASSES.num_classes, CLASSES.mean, CLASSES.std)
    images = torch.rand(2, 3, 64, 64, generator=gen(0)) * 255
    model.eval()
    with torch.no_grad():
        clean, perturbed = model(images, perturbed=True)
        torch.testing.assert_close(clean, model(images))
        torch.testing.assert_close(perturbed, clean)
    model.train()
    clean, perturbed = model(images, perturbed=True)
    assert (clean - perturbed).abs().mean() > 0.1 * clean.abs().mean()
    # Dropout2d(0.5): whole channels of the features the decoder reads are dropped, about half of them, and the
    # rest doubled.
    captured = []
    handle = model.spp.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    model(images, perturbed=True)
    handle.remove()
    features, dropped = captured[0].chunk(2)
    alive = features.flatten(2).abs().sum(2) > 0
    zeroed = dropped.flatten(2).abs().sum(2) == 0
    assert 0.4 < (zeroed & alive).sum() / alive.sum() < 0.6
    torch.testing.assert_close(dropped[~zeroed], 2 * features[~zeroed])


def test_cutmix_boxes_lie_inside_the_crop_with_the_published_area_and_probability() -> None:
    boxes = cutmix_box(2000, 48, 64, gen(0))
    has_box = boxes.flatten(1).any(1)
    assert 0.45 < has_box.float().mean() < 0.55
    area = boxes[has_box].flatten(1).float().mean(1)
    assert area.min() > 0.005 and area.max() <= 0.4 and 0.15 < area.mean() < 0.25
    rows, cols = boxes[has_box].any(2), boxes[has_box].any(1)
    assert torch.equal(boxes[has_box].flatten(1).sum(1), rows.sum(1) * cols.sum(1))  # one rectangle each
    assert torch.equal(cutmix_box(50, 48, 64, gen(1)), cutmix_box(50, 48, 64, gen(1)))


# ----------------------------------------------------------------------------- runs

def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("schedule, ema", [("fixmatch", 0.0), ("unimatch", 0.9)])
def test_an_online_run_trains_writes_no_pseudo_labels_and_records_each_term(
        schedule: str, ema: float, scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=2, pseudo_epochs=2, eval_each=1,
                               pseudo_root=tmp_path / "pseudo", student_schedule=schedule, pseudo_threshold=0.5,
                               pseudo_ema=ema, student_init="teacher", promote_always=True))
    assert not (tmp_path / "pseudo").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [e["iteration"] for e in summary["iterations"]] == [1, 2]
    assert summary["iterations"][1]["teacher"] == "student_it1"  # the promoted student taught iteration 2
    assert all(0 <= e["pseudo_miou"] <= 100 and e["pseudo_frames"] == 4 for e in summary["iterations"])
    terms = {"loss_labeled", "loss_strong", "above_threshold"} | ({"loss_perturbed"} if schedule == "unimatch"
                                                                  else set())
    student = [m for m in read_metrics(tmp_path / "run") if m["phase"] == f"it1_{schedule}"]
    assert len(student) == 2 and all(terms <= set(m) and 0 <= m["above_threshold"] <= 100 for m in student)
    assert all(("mean_teacher_score" in m) == bool(ema) for m in student)


def test_fixmatch_on_cifar_trains_and_records_each_term(tmp_path: Path) -> None:
    root = make_cifar_like(tmp_path / "cifar", n_train=200, n_test=40)
    semisup_cif.main([f"--{k}={v}" for k, v in {
        "data_root": root, "device": "cpu", "width": 8, "val_size": 20, "batch_size": 16, "labeled_fraction": 0.25,
        "teacher_epochs": 1, "no_iter": 1, "pseudo_epochs": 2, "student_schedule": "fixmatch",
        "joint_labeled_share": 0.25, "pseudo_threshold": 0.105, "save_dir": tmp_path / "ckpt",
        "run_dir": tmp_path / "run"}.items()])
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    assert 0 <= entry["pseudo_all_acc"] <= 100 and not list((tmp_path / "run").glob("pseudo_it*"))
    student = [m for m in read_metrics(tmp_path / "run") if m["phase"] == "it1_fixmatch"]
    assert len(student) == 2 and all({"loss_labeled", "loss_strong", "above_threshold"} <= set(m) for m in student)


def test_an_online_phase_killed_and_resumed_ends_as_an_uninterrupted_one(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    def run(work: Path) -> list[str]:
        return main_args(scenes8, work, labeled_fraction="1/2", no_iter=1, pseudo_epochs=3, eval_each=2,
                         student_schedule="unimatch", pseudo_ema=0.9, student_init="teacher", pseudo_threshold=0.3)

    semisup_cam.main(run(tmp_path / "whole"))
    batches = semisup_cam.online_batches
    epochs = []

    def killed_in_the_third_epoch(*args: Any, **kwargs: Any) -> Any:
        epochs.append(1)
        for index, batch in enumerate(batches(*args, **kwargs)):
            if len(epochs) == 3 and index == 1:
                raise Killed
            yield batch

    with monkeypatch.context() as patch:
        patch.setattr(semisup_cam, "online_batches", killed_in_the_third_epoch)
        with pytest.raises(Killed):
            semisup_cam.main(run(tmp_path / "killed"))
    semisup_cam.main(run(tmp_path / "killed"))
    whole, resumed = (torch.load(w / "run" / "last_it1_unimatch.pth.tar", weights_only=True)
                      for w in (tmp_path / "whole", tmp_path / "killed"))
    for part in ("state_dict", "mean_teacher"):
        assert all(torch.equal(resumed[part][k], v) for k, v in whole[part].items())
    drop = ("seconds",)
    assert ([{k: v for k, v in m.items() if k not in drop} for m in read_metrics(tmp_path / "killed" / "run")] ==
            [{k: v for k, v in m.items() if k not in drop} for m in read_metrics(tmp_path / "whole" / "run")])


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("script, overrides, message", [
    (semisup_cam, {"student_schedule": "unimatch", "pseudo_soft": True}, "--pseudo_soft=True acts on pseudo-label"),
    (semisup_cam, {"student_schedule": "fixmatch", "pseudo_tta": True}, "--pseudo_tta=True acts on"),
    (semisup_cam, {"student_schedule": "joint", "unlabeled_weight": 2}, "--unlabeled_weight=2.0 weighs the online"),
    (semisup_cam, {"student_schedule": "mixmatch"}, "'staged' or 'joint' or 'fixmatch' or 'unimatch'"),
    (semisup_cif, {"student_schedule": "unimatch"}, "'staged' or 'joint' or 'fixmatch'"),
    (semisup_cif, {"student_schedule": "fixmatch", "strong_aug": True}, "--strong_aug=True acts on the teacher's"),
])
def test_settings_an_online_student_would_ignore_are_refused(script: Any, overrides: dict[str, Any],
                                                             message: str, tmp_path: Path) -> None:
    argv = [f"--{k}={v}" for k, v in {"run_dir": tmp_path / "run", "save_dir": tmp_path / "ckpt",
                                       **overrides}.items()]
    with pytest.raises(UserError, match=message):
        script.main(argv)
    assert not (tmp_path / "run").exists()
