"""PSEUDO_IMAGE_SHARE (ST++'s image-level selection): which frames stay, the reliability score that
ranks them, the label files (all frames keep theirs), and the refusal of shares that mean nothing."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

import semisup_cam
from data.camvid import NUM_CLASSES
from utils.dist import Runtime
from utils.errors import UserError
from utils.pseudo import RELIABILITY, image_reliability, most_reliable

from test_pseudo_loop import PixelModel, random_frames, write_labels


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
    kept = write_labels(model, frames, tmp_path, {"teacher": "a"}, cpu, batch_size=3, image_share=0.5)

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
    assert write_labels(model, frames, tmp_path, {"teacher": "a"}, cpu, batch_size=3, image_share=0.5) == kept
    assert model.images_seen == seen  # a re-run reads the scores instead of predicting again
    (tmp_path / RELIABILITY).unlink()
    assert write_labels(model, frames, tmp_path, {"teacher": "a"}, cpu, batch_size=3, image_share=0.5) == kept
    assert model.images_seen == seen + 8  # one pass to score the frames, no PNG rewritten


@pytest.mark.parametrize("share", [0.0, 1.5])
def test_an_image_share_outside_zero_one_is_refused(tmp_path: Path, main_args: Callable[..., list[str]],
                                                    share: float) -> None:
    with pytest.raises(UserError, match="above 0 and at most 1"):
        semisup_cam.main(main_args(tmp_path / "absent", tmp_path, no_iter=1, pseudo_image_share=share))
    assert not (tmp_path / "run").exists()
