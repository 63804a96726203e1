"""PRECISION: "auto" takes bf16 only where the device computes it natively, the run records what it took, a
run is not resumed in another precision, and bf16 keeps weights, optimizer state and losses in fp32."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

import semisup_cam
import semisup_cif
from data.camvid import NUM_CLASSES
from data.synthetic import make_cifar_like
from models.swiftnet import swiftnet_rn18
from utils import dist
from utils.dist import Runtime, resolve_precision, setup
from utils.engine import cross_entropy, predict_probs
from utils.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Makes this CPU look as if it had (True) or lacked (False) bf16 instructions."""
    return lambda native: monkeypatch.setattr(dist, "cpu_has_native_bf16", lambda: native)


def test_auto_is_bf16_only_on_a_cpu_with_bf16_instructions(bf16_cpu: Callable[[bool], None]) -> None:
    bf16_cpu(True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert setup("cpu", "auto").precision == "bf16"
    bf16_cpu(False)  # AVX2, or AVX-512 without BF16: emulated, slower than fp32
    assert resolve_precision("auto", CPU) == "fp32"
    assert setup("cpu", "auto").precision == "fp32"


def test_an_explicit_precision_is_taken_as_given_and_a_wrong_one_is_refused(bf16_cpu: Callable[[bool], None],
                                                                            capsys: pytest.CaptureFixture) -> None:
    bf16_cpu(False)
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    assert setup("cpu", "bf16").precision == "bf16"
    assert "emulates" in capsys.readouterr().err  # said once, at start-up
    with pytest.raises(UserError, match="'auto', 'fp32' or 'bf16'"):
        resolve_precision("fp16", CPU)


def test_bf16_computes_the_forward_pass_in_bf16_and_keeps_the_rest_in_fp32() -> None:
    rt = Runtime(CPU, precision="bf16")
    torch.manual_seed(0)
    model = rt.prepare(swiftnet_rn18(NUM_CLASSES, [0.0] * 3, [1.0] * 3)).train()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.rand(2, 3, 32, 32) * 255, torch.randint(0, NUM_CLASSES, (2, 32, 32))
    with rt.autocast():
        logits = model(images)
        loss = cross_entropy(logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(t.dtype == torch.float32 for s in optimizer.state.values() for t in s.values() if t.numel() > 1)
    probs = predict_probs(model, images, rt)
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(2, 32, 32))
    fp32 = Runtime(CPU)
    with fp32.autocast():
        assert model(images).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "fp32-cpu"])
def test_config_json_records_what_auto_chose(native: bool, bf16_cpu: Callable[[bool], None], scenes: Path,
                                             tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    bf16_cpu(native)
    semisup_cam.main(main_args(scenes, tmp_path))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["precision"] == ("bf16" if native else "fp32")
    root = make_cifar_like(tmp_path / "cifar", n_train=100, n_test=20)
    semisup_cif.main([f"--{k}={v}" for k, v in {"data_root": root, "device": "cpu", "width": 8, "val_size": 20,
                                                 "batch_size": 16, "teacher_epochs": 1, "no_iter": 0,
                                                 "save_dir": tmp_path / "cif_ckpt",
                                                 "run_dir": tmp_path / "cif_run"}.items()])
    assert json.loads((tmp_path / "cif_run" / "config.json").read_text())["precision"] == config["precision"]


def test_a_run_is_not_resumed_in_another_precision(bf16_cpu: Callable[[bool], None], scenes: Path, tmp_path: Path,
                                                   main_args: Callable[..., list[str]]) -> None:
    bf16_cpu(False)
    semisup_cam.main(main_args(scenes, tmp_path, teacher_epochs=2))
    bf16_cpu(True)  # the same command on a machine with bf16 instructions
    with pytest.raises(UserError, match="precision: 'fp32' there, 'bf16' now"):
        semisup_cam.main(main_args(scenes, tmp_path, teacher_epochs=2))
    bf16_cpu(False)
    semisup_cam.main(main_args(scenes, tmp_path, teacher_epochs=2))  # where it computes the same, it goes on


def test_a_cpu_run_from_before_precision_existed_resumes_in_fp32(bf16_cpu: Callable[[bool], None], scenes: Path,
                                                                  tmp_path: Path,
                                                                  main_args: Callable[..., list[str]]) -> None:
    bf16_cpu(False)
    semisup_cam.main(main_args(scenes, tmp_path, no_iter=0))
    config_path = tmp_path / "run" / "config.json"
    old = json.loads(config_path.read_text())
    del old["precision"]
    config_path.write_text(json.dumps(old))
    semisup_cam.main(main_args(scenes, tmp_path, no_iter=0))
    assert json.loads(config_path.read_text())["precision"] == "fp32"
