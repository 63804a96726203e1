"""INIT_CHECKPOINT: new models start from a SwiftNet checkpoint, ours or the reference code's, of any class count."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

import semisup_cam
from data.camvid import STATISTICS
from models.swiftnet import SwiftNet
from test_model import reference_state_dict
from utils.checkpoint import save_checkpoint
from utils.errors import UserError

TENSORS = len(SwiftNet(11, *STATISTICS["camvid"]).state_dict())  # BatchNorm statistics included


def test_a_19_class_reference_state_dict_starts_a_camvid_run_and_the_log_says_what_it_loaded(
        scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]], capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "cityscapes_rn18.pt"
    torch.save(reference_state_dict(19)[0], path)  # the reference saves a bare state dict
    semisup_cam.main(main_args(scenes, tmp_path, init_checkpoint=path))
    out = capsys.readouterr().out
    loaded = f"Initialised from {path}: loaded {TENSORS - 2} of the model's {TENSORS} tensors: "
    assert loaded + "conv1 (1), bn1 (5), layer1 (" in out
    assert "spp (" in out and "upsample (" in out and "logits (5)" in out
    assert "  logits.conv.weight (11, 128, 1, 1), (19, 128, 1, 1) in the file\n" in out
    assert "  logits.conv.bias (11,), (19,) in the file\n" in out
    assert (tmp_path / "run" / "summary.json").is_file()


def test_one_of_our_checkpoints_starts_the_teacher_whole(
        scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]], capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "ours.pth.tar"
    save_checkpoint(path, state_dict=SwiftNet(11, *STATISTICS["camvid"]).state_dict())
    semisup_cam.main(main_args(scenes, tmp_path, init_checkpoint=path))
    out = capsys.readouterr().out
    assert f"Initialised from {path}: loaded {TENSORS} of the model's {TENSORS} tensors" in out
    assert "re-initialised" not in out


def test_a_missing_init_checkpoint_is_refused_before_the_run_starts(
        scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    with pytest.raises(UserError, match="--init_checkpoint=.*missing.pt does not exist"):
        semisup_cam.main(main_args(scenes, tmp_path, init_checkpoint=tmp_path / "missing.pt"))
    assert not (tmp_path / "run").exists()
