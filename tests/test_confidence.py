"""Which pseudo-labels stay: the global threshold, lowered per class by PSEUDO_CLASS_SHARE, in the
cut-off arithmetic, in the CamVid label files (also when a run resumes labeling half way); which
frames stay with PSEUDO_IMAGE_SHARE; and both experiments end to end with every self-training
option on at once."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import semisup_cam
import semisup_cif
from data.classes import IGNORE_INDEX, NUM_CLASSES
from data.synthetic import make_cifar_like, make_street_scenes
from utils.confidence import (BINS, class_cutoffs, confidence_histogram, cutoff_confidences, image_reliability,
                              keep_mask, most_reliable)
from utils.checkpoint import load_checkpoint
from utils.dist import Runtime
from utils.engine import mixed_batches
from utils.errors import UserError
from utils.pseudo import CLASS_THRESHOLDS, RELIABILITY, label_frames, pseudo_folder

from conftest import TINY_SIZE
from test_pseudo_loop import FixedLogits, PixelModel, png_files, random_frames, read_png


def _confident_and_rare() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: 10 pixels at 0.5 and 90 at 0.9; class 1: 40 pixels from 0.30 to 0.69; class 2: none."""
    confidence = torch.cat([torch.full((10,), 0.5), torch.full((90,), 0.9), torch.arange(30, 70) / 100])
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    return confidence, labels


def test_class_share_lowers_the_threshold_only_where_the_threshold_keeps_too_little() -> None:
    confidence, labels = _confident_and_rare()
    cutoffs = class_cutoffs(confidence_histogram(confidence, labels, 3), class_share=0.25)
    keep = keep_mask(confidence, labels, threshold=0.8, cutoffs=cutoffs)

    # Class 0 keeps 90% above the threshold, more than 25%: exactly what the threshold keeps.
    assert keep[:100].tolist() == (confidence[:100] >= 0.8).tolist()
    # Class 1 has nothing above 0.8: its 10 most confident pixels of 40 stay, 0.60 to 0.69.
    assert keep[100:].tolist() == [False] * 30 + [True] * 10
    needed = cutoff_confidences(cutoffs, threshold=0.8)
    assert needed[0] == 0.8 and needed[1] == pytest.approx(0.6, abs=2 / BINS) and needed[2] == 0.8
    assert cutoffs[2] == BINS  # nobody predicted class 2


def test_without_cutoffs_only_the_threshold_counts_and_a_share_of_one_keeps_everything() -> None:
    confidence, labels = _confident_and_rare()
    assert keep_mask(confidence, labels, 0.8).tolist() == (confidence >= 0.8).tolist()
    everything = class_cutoffs(confidence_histogram(confidence, labels, 3), class_share=1.0)
    assert keep_mask(confidence, labels, 0.99, everything).all()


def test_histograms_of_parts_add_up_to_the_histogram_of_the_whole() -> None:
    """What lets batches and processes count separately and sum their counts."""
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(2, 5, 7, generator=generator)
    confidence[0, 0, 0] = 1.0  # the top edge belongs to the top bin
    labels = torch.randint(0, NUM_CLASSES, (2, 5, 7), generator=generator)
    whole = confidence_histogram(confidence, labels, NUM_CLASSES)
    parts = confidence_histogram(confidence[:1], labels[:1], NUM_CLASSES) + confidence_histogram(
        confidence[1:], labels[1:], NUM_CLASSES)
    assert torch.equal(whole, parts) and whole.sum() == confidence.numel()
    assert whole[labels[0, 0, 0], BINS - 1] >= 1


def _logits_for(confidence: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax maximum is `confidence`, for class `winner`, at each pixel."""
    logits = torch.zeros(1, NUM_CLASSES, *confidence.shape)
    logits[0].scatter_(0, winner[None], torch.log(10 * confidence / (1 - confidence))[None])
    return logits


def test_label_files_keep_each_class_share_and_record_the_confidence_each_class_needed(tmp_path: Path,
                                                                                      cpu: Runtime) -> None:
    # Left half: Road at 0.9. Right half: Pedestrian, half its pixels at 0.6, half at 0.7.
    height, width = 4, 8
    winner = torch.full((height, width), 5)
    winner[:, width // 2 :] = 6
    confidence = torch.full((height, width), 0.9)
    confidence[:, width // 2 :] = torch.tensor([0.6, 0.7]).repeat(height * width // 4).view(height, width // 2)
    frames = random_frames(3, height, width)
    label_frames(FixedLogits(_logits_for(confidence, winner)), frames, tmp_path, {}, cpu, IGNORE_INDEX,
                 batch_size=2, threshold=0.8, class_share=0.5)

    expected = torch.where(confidence < 0.65, IGNORE_INDEX, winner).numpy()
    for name in frames.names:
        assert (read_png(tmp_path / f"{name}.png") == expected).all()
    record = json.loads((tmp_path / CLASS_THRESHOLDS).read_text())
    assert record["class_share"] == 0.5 and record["threshold"] == 0.8
    assert record["confidence_needed"][5] == 0.8
    assert record["confidence_needed"][6] == pytest.approx(0.7, abs=2 / BINS)


def test_resumed_labeling_cuts_with_every_frame_not_just_the_missing_ones(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(8, seed=3)
    model = PixelModel(seed=1)
    settings = dict(batch_size=3, threshold=0.99, class_share=0.3)  # the cut-offs decide every pixel
    whole = tmp_path / "whole"
    label_frames(model, frames, whole, {}, cpu, IGNORE_INDEX, **settings)
    resumed = tmp_path / "resumed"
    label_frames(model, frames, resumed, {}, cpu, IGNORE_INDEX, **settings)
    for name in frames.names[::2]:
        (resumed / f"{name}.png").unlink()
    label_frames(model, frames, resumed, {}, cpu, IGNORE_INDEX, **settings)

    assert png_files(resumed) == png_files(whole)
    labels = np.stack([read_png(whole / f"{name}.png") for name in frames.names])
    assert 0.2 < (labels != IGNORE_INDEX).mean() < 0.8  # the share kept some and dropped some


def test_image_reliability_counts_each_predicted_class_once() -> None:
    # Image 0: 90 pixels of class 0 at 0.99 and 10 of class 1 at 0.3. Image 1: 100 of class 2 at 0.8.
    confidence = torch.stack([torch.cat([torch.full((90,), 0.99), torch.full((10,), 0.3)]),
                              torch.full((100,), 0.8)]).view(2, 10, 10)
    labels = torch.stack([torch.cat([torch.zeros(90), torch.ones(10)]), torch.full((100,), 2.0)]).view(2, 10, 10)
    reliability = image_reliability(confidence, labels.long(), NUM_CLASSES)

    # Image 0's pixels average 0.921, but its uncertain class weighs as much as its sure one.
    assert reliability.tolist() == pytest.approx([(0.99 + 0.3) / 2, 0.8])
    assert most_reliable({"a": reliability[0].item(), "b": reliability[1].item()}, 0.5) == {"b"}


@pytest.mark.parametrize("share, kept", [(0.5, {"c", "b"}), (0.6, {"c", "b"}), (0.7, {"c", "b", "a"}),
                                         (0.01, {"c"}), (1.0, {"a", "b", "c", "d"})])
def test_most_reliable_keeps_the_rounded_share_and_at_least_one(share: float, kept: set[str]) -> None:
    assert most_reliable({"a": 0.5, "b": 0.7, "c": 0.9, "d": 0.5}, share) == kept


def test_an_image_share_returns_the_most_reliable_frames_and_labels_them_all(tmp_path: Path, cpu: Runtime) -> None:
    frames = random_frames(8, seed=5)
    model = PixelModel(seed=2)
    kept = label_frames(model, frames, tmp_path, {"teacher": "a"}, cpu, IGNORE_INDEX, batch_size=3, image_share=0.5)

    assert sorted(p.stem for p in tmp_path.glob("*.png")) == frames.names  # quality needs every frame's labels
    probs = torch.softmax(model(frames.images), 1).double()
    confidence, labels = probs.max(1)
    by_hand = {}
    for name, conf, lab in zip(frames.names, confidence, labels):
        means = [conf[lab == c].mean().item() for c in lab.unique()]
        by_hand[name] = sum(means) / len(means)
    stored = json.loads((tmp_path / RELIABILITY).read_text())["reliability"]
    assert stored == pytest.approx(by_hand, abs=1e-5)
    top = sorted(by_hand, key=by_hand.get, reverse=True)[:4]
    assert kept == sorted(top) and len(set(by_hand.values())) == 8

    seen = model.images_seen
    assert label_frames(model, frames, tmp_path, {"teacher": "a"}, cpu, IGNORE_INDEX, batch_size=3,
                        image_share=0.5) == kept
    assert model.images_seen == seen  # a re-run reads the scores instead of predicting again
    (tmp_path / RELIABILITY).unlink()
    assert label_frames(model, frames, tmp_path, {"teacher": "a"}, cpu, IGNORE_INDEX, batch_size=3,
                        image_share=0.5) == kept
    assert model.images_seen == seen + 8  # one pass to score the frames, no PNG rewritten


@pytest.mark.parametrize("share, threshold, message", [
    (0.5, 0.0, "set --pseudo_threshold too"),
    (1.5, 0.8, "between 0 and 1"),
])
def test_a_class_share_that_cannot_mean_anything_is_refused(tmp_path: Path, main_args: Callable[..., list[str]],
                                                          share: float, threshold: float, message: str) -> None:
    with pytest.raises(UserError, match=message):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, no_iter=1, pseudo_class_share=share,
                                   pseudo_threshold=threshold))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_an_image_share_outside_zero_one_is_refused(tmp_path: Path, main_args: Callable[..., list[str]],
                                                    share: float) -> None:
    with pytest.raises(UserError, match="above 0 and at most 1"):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, no_iter=1, pseudo_image_share=share))
    assert not (tmp_path / "run").exists()


EVERY_OPTION = {"student_schedule": "joint", "joint_labeled_share": 0.25, "pseudo_threshold": 0.6,
                "pseudo_class_share": 0.5, "strong_aug": True, "pseudo_soft": True, "student_init": "teacher",
                "pseudo_ema": 0.9, "pseudo_align": True}


def record_batch_shares(monkeypatch: pytest.MonkeyPatch, module: str) -> list[Any]:
    """The `shares` of every mixed_batches call the task module makes, the calls themselves unchanged."""
    shares: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        shares.append(args[3] if len(args) > 3 else kwargs.get("shares"))
        return mixed_batches(*args, **kwargs)

    monkeypatch.setattr(f"{module}.mixed_batches", recording)
    return shares


def test_every_camvid_option_at_once(tmp_path: Path, main_args: Callable[..., list[str]],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shares = record_batch_shares(monkeypatch, "utils.segmentation")
    data = make_street_scenes(tmp_path / "camvid", counts={"train": 8, "val": 2, "test": 2}, unlabeled=0,
                              size=TINY_SIZE)
    semisup_cam.main(main_args(data, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=1,
                               pseudo_root=tmp_path / "pseudo", pseudo_tta=True, tta_scales="0.5,1.0",
                               pseudo_image_share=0.5, **EVERY_OPTION))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {name: config[name] for name in EVERY_OPTION} == EVERY_OPTION and config["pseudo_tta"] is True
    assert config["pseudo_image_share"] == 0.5
    assert shares == [None, [0.25, 0.75]]  # the teacher, then the joint student
    entry = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    folder = pseudo_folder(tmp_path / "pseudo", 1)
    assert len(list(folder.glob("*.png"))) == 4 and entry["pseudo_frames"] == 2  # 4 unlabeled, the surer half
    kept = most_reliable(json.loads((folder / RELIABILITY).read_text())["reliability"], 0.5)
    stored = np.stack([np.array(Image.open(folder / f"{name}.png")) for name in sorted(kept)])
    assert entry["pseudo_ignored_frac"] == pytest.approx((stored == IGNORE_INDEX).mean() * 100, abs=0.01)
    needed = json.loads((folder / CLASS_THRESHOLDS).read_text())["confidence_needed"]
    assert len(needed) == NUM_CLASSES and all(0 <= c <= 0.6 for c in needed)


def test_every_cifar_option_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shares = record_batch_shares(monkeypatch, "utils.classification")
    root = make_cifar_like(tmp_path / "cifar", n_train=200, n_test=40)
    settings = {"data_root": root, "device": "cpu", "width": 8, "val_size": 20, "batch_size": 16,
                "labeled_fraction": 0.25, "teacher_epochs": 1, "no_iter": 1, "pseudo_epochs": 1,
                "finetune_epochs": 1, "save_dir": tmp_path / "ckpt", "run_dir": tmp_path / "run", **EVERY_OPTION,
                "pseudo_threshold": 0.99}
    semisup_cif.main([f"--{name}={value}" for name, value in settings.items()])
    entry: dict[str, Any] = json.loads((tmp_path / "run" / "summary.json").read_text())["iterations"][0]
    # An untrained teacher is sure of nothing at 0.99; the class share still keeps half of each class.
    assert 50 <= entry["pseudo_kept_frac"] < 100
    assert shares == [None, [0.25, 0.75]]
    running = load_checkpoint(tmp_path / "run" / "last_it1_joint.pth.tar")["alignment"]["running"]
    assert running.shape == (10,) and running.sum().item() == pytest.approx(1.0)
