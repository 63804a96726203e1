"""The command-line configurator and the checkpoint files."""
from __future__ import annotations

import ast
import re

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import semisup_cam
import semisup_cif
from data.camvid import STATISTICS
from models.swiftnet import SwiftNet
from utils.checkpoint import load_checkpoint, load_weights, parameter_count, save_checkpoint
from utils.config import configure, constants_of
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def configured(*argv: str) -> dict:
    return configure(vars(semisup_cam), list(argv), semisup_cam.DEMO)


# ----------------------------------------------------------------------------- configure

def test_defaults_are_the_constants_of_the_script() -> None:
    cfg = configured()
    assert cfg.batch_size == semisup_cam.BATCH_SIZE and cfg.data_root == semisup_cam.DATA_ROOT
    assert cfg.tta_scales == semisup_cam.TTA_SCALES and cfg.demo is False
    assert "demo" in cfg and "main" not in cfg and "sys" not in cfg  # only UPPER_CASE constants


@pytest.mark.parametrize("script", [semisup_cam, semisup_cif], ids=["cam", "cif"])
def test_the_constants_are_those_the_script_assigns_not_names_it_imports(script: Any) -> None:
    tree = ast.parse(Path(script.__file__).read_text())
    assigned = {target.id.lower() for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Name) and target.id.isupper() and target.id != "DEMO"}
    assert set(constants_of(vars(script))) == assigned


@pytest.mark.parametrize("arg, name, value", [
    ("--batch_size=4", "batch_size", 4),
    ("--teacher_lr=0.01", "teacher_lr", 0.01),
    ("--labeled_fraction=1/8", "labeled_fraction", 0.125),
    ("--pretrained=false", "pretrained", False),
    ("--pretrained=False", "pretrained", False),
    ("--data_on_device=true", "data_on_device", True),
    ("--compile=1", "compile", True),
    ("--device=cpu", "device", "cpu"),
    ("--split_file=runs/a=b/split.json", "split_file", "runs/a=b/split.json"),
    ("--tta_scales=0.5,1.0", "tta_scales", [0.5, 1.0]),
    ("--tta_scales=[0.5, 1, 2]", "tta_scales", [0.5, 1.0, 2.0]),
])
def test_overrides_parse_to_the_type_of_the_constant(arg: str, name: str, value: object) -> None:
    parsed = configured(arg)[name]
    assert parsed == value and type(parsed) is type(value)
    if isinstance(value, list):
        assert all(type(item) is float for item in parsed)


def test_an_unknown_name_suggests_a_close_match_and_lists_valid_names() -> None:
    with pytest.raises(UserError, match="--batch_sise") as error:
        configured("--batch_sise=4")
    message = str(error.value)
    assert "Did you mean --batch_size?" in message
    assert "teacher_epochs" in message and "pseudo_threshold" in message


@pytest.mark.parametrize("arg, name", [
    ("--batch_size=abc", "batch_size"),
    ("--batch_size=4.5", "batch_size"),
    ("--pseudo_threshold=high", "pseudo_threshold"),
    ("--labeled_fraction=1/0", "labeled_fraction"),
    ("--pretrained=maybe", "pretrained"),
    ("--tta_scales=0.5,big", "tta_scales"),
])
def test_a_value_of_the_wrong_type_names_the_constant(arg: str, name: str) -> None:
    with pytest.raises(UserError, match=f"--{name}=") as error:
        configured(arg)
    assert name.upper() in str(error.value)


@pytest.mark.parametrize("arg", ["batch_size=4", "--batch_size", "-b"])
def test_arguments_not_of_the_form_name_value_are_refused(arg: str) -> None:
    with pytest.raises(UserError, match="--name=value"):
        configured(arg)


def test_demo_applies_its_overrides() -> None:
    cfg = configured("--demo")
    assert cfg.demo is True
    assert cfg.data_root == semisup_cam.DEMO["DATA_ROOT"] and cfg.crop_size == semisup_cam.DEMO["CROP_SIZE"]
    assert cfg.pretrained is False and cfg.seed == semisup_cam.SEED  # untouched constants keep defaults


@pytest.mark.parametrize("argv", [["--demo", "--crop_size=64"], ["--crop_size=64", "--demo"]])
def test_explicit_overrides_win_over_demo_in_any_order(argv: list[str]) -> None:
    cfg = configured(*argv)
    assert cfg.crop_size == 64
    assert cfg.teacher_epochs == semisup_cam.DEMO["TEACHER_EPOCHS"]


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_a_checkpoint_round_trips_tensors_and_fields(tmp_path: Path, tiny_model: nn.Module) -> None:
    optimizer = torch.optim.Adam(tiny_model.parameters())
    tiny_model(torch.rand(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    path = tmp_path / "model.pth.tar"
    save_checkpoint(path, iteration=2, epoch=7, state_dict=tiny_model.state_dict(), optimizer=optimizer.state_dict(),
                    val_iou=61.5, config={"batch_size": 4, "tta_scales": [1.0]})
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 2 and loaded["epoch"] == 7 and loaded["val_iou"] == 61.5
    assert loaded["config"] == {"batch_size": 4, "tta_scales": [1.0]}
    assert isinstance(loaded["saved_at"], str)
    assert loaded["state_dict"].keys() == tiny_model.state_dict().keys()
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded["state_dict"][name], tensor), name
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    # It is a plain weights-only file.
    assert torch.load(path, weights_only=True)["epoch"] == 7


def test_saving_leaves_no_temporary_files(tmp_path: Path, tiny_model: nn.Module) -> None:
    for epoch in range(3):
        save_checkpoint(tmp_path / "last.pth.tar", epoch=epoch, state_dict=tiny_model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth.tar"]
    assert load_checkpoint(tmp_path / "last.pth.tar")["epoch"] == 2


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, tiny_model: nn.Module) -> None:
    path = tmp_path / "best.pth.tar"
    save_checkpoint(path, epoch=1, state_dict=tiny_model.state_dict())
    with pytest.raises(Exception):
        save_checkpoint(path, epoch=2, hook=lambda: None)  # a lambda cannot be pickled
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth.tar"]
    assert load_checkpoint(path)["epoch"] == 1


def test_a_missing_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pth.tar")


def corrupt_bytes(kind: str, valid: bytes) -> bytes:
    if kind == "random":
        return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "truncated":
        return valid[: len(valid) // 2]
    if kind == "text":
        return b"this is not a checkpoint\n"
    if kind == "empty":
        return b""
    return b"a"  # a pickle opcode that pops from an empty stack


@pytest.mark.parametrize("kind", ["random", "truncated", "text", "empty", "stack_underflow"])
def test_a_damaged_checkpoint_is_a_user_error(tmp_path: Path, tiny_model: nn.Module, kind: str) -> None:
    path = tmp_path / "model.pth.tar"
    save_checkpoint(path, epoch=1, state_dict=tiny_model.state_dict())
    path.write_bytes(corrupt_bytes(kind, path.read_bytes()))
    with pytest.raises(UserError, match="damaged or not a checkpoint"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self) -> tuple:
        return (print, ("code ran",))


def test_a_checkpoint_that_would_run_code_is_refused_without_advice_to_load_it_unsafely(tmp_path: Path) -> None:
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": {}, "extra": Payload()}, path)
    with pytest.raises(UserError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert re.match(rf"{path} is not a plain checkpoint: it holds Python objects that would run code when loaded "
                    r"\(.*GLOBAL print.*\)\. Do not trust it", message), message
    assert not any(advice in message for advice in ("weights_only", "succeed", "safe_globals", "allowlist"))


def test_weights_of_another_class_count_are_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "eleven.pth.tar"
    save_checkpoint(path, state_dict=SwiftNet(11, *STATISTICS["camvid"]).state_dict())
    with pytest.raises(UserError, match="classes") as error:
        load_weights(SwiftNet(5, *STATISTICS["camvid"]), load_checkpoint(path), path)
    assert "logits" in str(error.value) and str(path) in str(error.value)


def test_load_weights_restores_the_saved_weights(tmp_path: Path, tiny_model: nn.Module) -> None:
    path = tmp_path / "model.pth.tar"
    save_checkpoint(path, state_dict=tiny_model.state_dict())
    torch.manual_seed(1)
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    load_weights(other, load_checkpoint(path), path)
    assert torch.equal(other[0].weight, tiny_model[0].weight)


def test_a_checkpoint_without_state_dict_or_with_other_layers_is_refused(tmp_path: Path,
                                                                          tiny_model: nn.Module) -> None:
    path = tmp_path / "model.pth.tar"
    save_checkpoint(path, epoch=1)
    with pytest.raises(UserError, match="state_dict"):
        load_weights(tiny_model, load_checkpoint(path), path)
    save_checkpoint(path, state_dict={"other.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="does not fit"):
        load_weights(tiny_model, load_checkpoint(path), path)


def test_the_checkpoint_tool_prints_epoch_and_parameters(tmp_path: Path, tiny_model: nn.Module) -> None:
    path = tmp_path / "teacher_best.pth.tar"
    save_checkpoint(path, iteration=0, epoch=12, state_dict=tiny_model.state_dict(), val_iou=55.25,
                    config={"crop_size": 32})
    result = subprocess.run([sys.executable, "-m", "utils.checkpoint", str(path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines() if ":" in line}
    assert lines["epoch"].split(":")[1].strip() == "12"
    assert lines["val_iou"].split(":")[1].strip() == "55.25"
    assert lines["parameters"].split(":")[1].strip() == f"{parameter_count(tiny_model.state_dict()):,}"
    assert "crop_size = 32" in result.stdout


def test_the_checkpoint_tool_reports_a_missing_file_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth.tar"
    result = subprocess.run([sys.executable, "-m", "utils.checkpoint", str(missing)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_constants_and_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as stopped:
        configure({"BATCH_SIZE": 12, "DATA_ROOT": "data/camvid"}, ["--help"])
    assert stopped.value.code == 0
    assert "--batch_size=12" in capsys.readouterr().out
