"""PSEUDO_FEATURE_DROP (UniMatch's feature perturbation): the pseudo-labeled crops of a batch are decoded a
second time from encoder features with channels dropped, and those logits learn the same targets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import semisup_cam
from data.classes import NUM_CLASSES
from data.camvid import STATISTICS
from models.swiftnet import SwiftNet, swiftnet_rn18
from utils import segmentation
from utils.dist import Runtime
from utils.engine import Source, local_crops, mixed_batches


@pytest.fixture(scope="module")
def model() -> SwiftNet:
    torch.manual_seed(0)
    return swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"]).eval()  # running BatchNorm statistics: each image is decoded alone


def images(batch: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_perturbed_logits_follow_the_clean_ones_for_the_last_images(model: SwiftNet) -> None:
    batch = images(4)
    clean = model(batch)
    undropped = model(batch, perturbed=2, feature_drop=0.0)
    assert undropped.shape == (6, NUM_CLASSES, 48, 64)
    torch.testing.assert_close(undropped[:4], clean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(undropped[4:], clean[2:], rtol=1e-4, atol=1e-4)

    dropped = model(batch, perturbed=2, feature_drop=0.5)
    torch.testing.assert_close(dropped[:4], clean, rtol=1e-4, atol=1e-4)  # the clean logits are untouched
    assert (dropped[4:] - clean[2:]).abs().mean() > 0.01


@torch.no_grad()
def test_whole_channels_of_the_encoder_features_are_dropped_and_the_rest_rescaled(model: SwiftNet) -> None:
    seen: list[torch.Tensor] = []
    hook = model.spp.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        torch.manual_seed(1)
        model(images(3), perturbed=1, feature_drop=0.5)
    finally:
        hook.remove()
    features = seen[0]  # the stride-32 features: 3 clean images, then the last one perturbed
    assert features.shape[:2] == (4, 512)
    clean, perturbed = features[2], features[3]
    dropped = perturbed.flatten(1).abs().amax(1) == 0
    assert 0.3 < dropped.float().mean() < 0.7
    torch.testing.assert_close(perturbed[~dropped], 2 * clean[~dropped])


def tagged(size: int, tag: int) -> Source:
    return Source(size, lambda index, generator: (index.float(), torch.full_like(index, tag)))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_local_crops_count_what_each_process_gets_of_every_source(world: int) -> None:
    sources, shares = [tagged(23, 0), tagged(344, 1)], [0.25, 0.75]
    for rank in range(world):
        rt = Runtime(torch.device("cpu"), rank=rank, world=world)
        _, batches = mixed_batches(sources, 12, rt, shares)
        _, labels = next(batches(torch.Generator().manual_seed(0)))
        assert local_crops(sources, 12, rt, shares) == [(labels == 0).sum().item(), (labels == 1).sum().item()]
    tiny = [tagged(2, 1)]  # a set smaller than a batch gives one batch of all of it
    assert local_crops(tiny, 8, Runtime(torch.device("cpu"))) == [2]


@pytest.mark.parametrize("schedule, perturbed", [("joint", {"teacher": 0, "it1_joint": 2}),
                                                 ("staged", {"teacher": 0, "it1_pseudo": 4, "it1_finetune": 0})])
def test_each_step_of_the_student_learns_its_pseudo_labeled_crops_twice(
        scenes8: Path, tmp_path: Path, main_args: Callable[..., list[str]], monkeypatch: pytest.MonkeyPatch,
        schedule: str, perturbed: dict[str, int]) -> None:
    """Batches of 4: in the joint schedule 2 of them are pseudo-labeled, in the staged one all 4 are."""
    steps: list[tuple[str, int, int, int]] = []  # phase, perturbed images, logits and targets in the loss
    phase_of = {}
    forward, loss = SwiftNet.forward, segmentation.cross_entropy

    def recording_forward(self: SwiftNet, batch: torch.Tensor, perturbed: int = 0, feature_drop: float = 0.5) -> Any:
        if self.training:
            phase_of["perturbed"] = perturbed
        return forward(self, batch, perturbed, feature_drop)

    def recording_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
        count = phase_of["perturbed"]
        steps.append((phase_of["name"], count, len(logits), len(target)))
        if count:  # the appended targets are those of the last crops, the pseudo-labeled ones
            assert torch.equal(target[-count:], target[-2 * count : -count])
        return loss(logits, target, ignore_index)

    def recording_phase(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        phase = original_phase(self, name, *args, **kwargs)

        def batches(generator: torch.Generator) -> Any:
            phase_of["name"] = name
            yield from original_batches(generator)

        original_batches = phase.batches
        phase.batches = batches
        return phase

    original_phase = segmentation.CamVidSelfTraining._phase
    monkeypatch.setattr(SwiftNet, "forward", recording_forward)
    monkeypatch.setattr(segmentation, "cross_entropy", recording_loss)
    monkeypatch.setattr(segmentation.CamVidSelfTraining, "_phase", recording_phase)
    semisup_cam.main(main_args(scenes8, tmp_path, labeled_fraction="1/2", no_iter=1, pseudo_epochs=1,
                               finetune_epochs=1, pseudo_root=tmp_path / "pseudo", student_schedule=schedule,
                               pseudo_feature_drop=0.5))

    assert json.loads((tmp_path / "run" / "config.json").read_text())["pseudo_feature_drop"] == 0.5
    assert {name for name, *_ in steps} == set(perturbed)
    for name, count, logits, targets in steps:
        assert count == perturbed[name]
        assert logits == targets == 4 + perturbed[name]
