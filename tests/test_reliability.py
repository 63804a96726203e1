"""Reliability: a killed run resumes to the result of an uninterrupted one, bad input stops with a
message that names the file or constant and the fix, seeded runs repeat, and checkpoints never
unpickle code.

Training runs here are tiny (64x48 scenes, 32-pixel crops, a few epochs) and run on one CPU thread:
subprocesses inherit OMP_NUM_THREADS=1, because two processes with several OpenMP threads each
spin against each other on a small machine and become many times slower.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import semisup_cam
import semisup_cif
from data import cifar
from data.cifar import CIFAR_FOLDER, load_cifar10
from data.camvid import STATISTICS
from data.synthetic import make_cifar_like, make_street_scenes
from models.swiftnet import SwiftNet
from utils import engine
from utils.checkpoint import load_checkpoint, load_weights, save_checkpoint
from utils.dist import Runtime
from utils.engine import TrainingDiverged
from utils.errors import UserError
from utils.records import Run

from conftest import FIT_CONFIG, supervised

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SIZE = (64, 48)
FRAME_SIZE = (160, 120)  # the pseudo-label test: frames big enough that labeling takes a moment
FRAMES = 60
EPOCHS = 5  # the kill-and-resume teacher
POLL_S = 0.01
WAIT_S = 120

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def scenes16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only: 16 train images (4 steps of 4 per epoch), 4 val, 4 test, no unlabeled frames."""
    root = tmp_path_factory.mktemp("scenes16")
    return make_street_scenes(root, counts={"train": 16, "val": 4, "test": 4}, unlabeled=0, size=SIZE)


@pytest.fixture
def data(scenes: Path) -> Path:
    """conftest's private copy of the tiny scenes (4 train, 2 val, 2 test, 3 frames), which a test may damage."""
    return scenes


def cam_args(data_root: Path, work: Path, **overrides: Any) -> list[str]:
    """semisup_cam's command line for a tiny CPU run whose records and checkpoints go under `work`."""
    settings = {"data_root": data_root, "device": "cpu", "pretrained": False, "batch_size": 4, "crop_size": 32,
                "eval_batch_size": 8, "teacher_epochs": 1, "eval_each": 1, "no_iter": 0,
                "save_dir": work / "ckpt", "run_dir": work / "run"}
    settings.update(overrides)
    return [f"--{name}={value}" for name, value in settings.items()]


def launch(script: str, args: list[str], log: Path) -> subprocess.Popen:
    """The script as a subprocess; its output goes to a file (tqdm would fill a pipe and block it)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT)


def run_script(script: str, args: list[str], log: Path, timeout: float = WAIT_S) -> int:
    proc = launch(script, args, log)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"timed out waiting for {what}:\n{tail(log)}")
        time.sleep(POLL_S)


def saved_epoch(path: Path) -> int:
    """The epoch of a resume checkpoint, 0 while there is none; it may be replaced while we read it."""
    if not path.is_file():
        return 0
    try:
        return int(load_checkpoint(path)["epoch"])
    except (UserError, OSError):
        return 0  # read again at the next poll


def kill(proc: subprocess.Popen) -> None:
    proc.kill()  # SIGKILL: no handler, no cleanup, like a cluster's time limit or a power cut
    proc.wait()


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def last_per_epoch(lines: list[dict[str, Any]], phase: str) -> dict[int, dict[str, Any]]:
    """An epoch that a kill interrupted after its line was written is re-run; the later line counts."""
    return {m["epoch"]: m for m in lines if m["phase"] == phase}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def progress_of(run: Path) -> dict[str, Any]:
    """The finished phases; none before progress.json is first written."""
    path = run / "progress.json"
    return read_json(path)["phases"] if path.is_file() else {}


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """What a run measured, without the timings and the run's own id."""
    return {key: value for key, value in summary.items() if key not in ("timings_s", "run_id")}


# ----------------------------------------------------------------------------- kill and resume

def saved_epochs_of_a_six_epoch_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_s: float) -> list[int]:
    """Trains a tiny phase validated every third epoch and lists the epoch of each resume checkpoint written."""
    saved: list[int] = []
    monkeypatch.setattr(engine, "RESUME_SAVE_EVERY_S", every_s)
    monkeypatch.setattr(engine, "save_checkpoint",
                        lambda path, **fields: saved.append(fields["epoch"]) if "last_" in Path(path).name else None)

    def batches(generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield torch.rand(2, 3, 4, 4, generator=generator), torch.randint(0, 2, (2, 4, 4), generator=generator)

    model = torch.nn.Conv2d(3, 2, 1)
    run = Run(tmp_path / "run", {"run_dir": str(tmp_path / "run"), "resume": True, **FIT_CONFIG, "eval_each": 3})
    engine.fit(model, "teacher", 0, batches, 1, 6, supervised, torch.optim.SGD(model.parameters(), lr=0.1),
               engine.Best(tmp_path / "best.pth.tar", "val_iou"), lambda model: (0.0, {}), run,
               Runtime(torch.device("cpu")))
    return saved


def test_short_epochs_write_the_resume_checkpoint_at_evaluations_only(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the last 6 is the finished phase's slim checkpoint
    assert saved_epochs_of_a_six_epoch_phase(tmp_path, monkeypatch, every_s=3600) == [3, 6, 6]


def test_epochs_longer_than_the_interval_each_write_the_resume_checkpoint(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert saved_epochs_of_a_six_epoch_phase(tmp_path, monkeypatch, every_s=0) == [1, 2, 3, 4, 5, 6, 6]


def test_a_killed_teacher_resumes_to_the_result_of_an_uninterrupted_run(scenes16: Path, tmp_path: Path) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = cam_args(scenes16, killed, teacher_epochs=EPOCHS)
    log = tmp_path / "killed.log"
    proc = launch("semisup_cam.py", args, log)
    last = killed / "run" / "last_teacher.pth.tar"
    wait_until(lambda: saved_epoch(last) >= 1, proc, log, "the first resume checkpoint")
    time.sleep(0.1)  # into the next epoch's steps
    kill(proc)

    at_kill = saved_epoch(last)
    assert 1 <= at_kill < EPOCHS, f"the run was not killed part-way (checkpoint epoch {at_kill}):\n{tail(log)}"
    assert "teacher" not in progress_of(killed / "run")
    seconds_before_kill = read_json(killed / "run" / "summary.json")["timings_s"]["teacher"]

    assert run_script("semisup_cam.py", args, tmp_path / "resumed.log") == 0, tail(tmp_path / "resumed.log")
    run = killed / "run"
    lines = metrics(run)
    epochs = [m["epoch"] for m in lines if m["phase"] == "teacher"]
    assert set(epochs) == set(range(1, EPOCHS + 1)) and epochs[-1] == EPOCHS
    assert epochs.count(1) == 1, "the re-run started the teacher over instead of resuming it"
    progress = read_json(run / "progress.json")["phases"]
    assert progress["teacher"]["epochs"] == EPOCHS
    best = torch.load(killed / "ckpt" / "teacher_best.pth.tar", map_location="cpu", weights_only=True)
    assert best["epoch"] == progress["teacher"]["best_epoch"]
    assert not list(run.glob(".*.tmp"))  # a save the kill interrupted leaves no temporary file behind
    # The timing adds the resumed process's time, which holds the training of the epochs after the kill, to
    # what the killed process had spent.
    seconds = {m["epoch"]: m["seconds"] for m in lines if m["phase"] == "teacher"}  # training time, cumulative
    trained_after_kill = seconds[EPOCHS] - seconds[at_kill]
    assert read_json(run / "summary.json")["timings_s"]["teacher"] > seconds_before_kill + trained_after_kill

    # The same command, never interrupted (in this process, which also runs on one thread): the restored
    # random states make the resumed run identical to it.
    semisup_cam.main(cam_args(scenes16, whole, teacher_epochs=EPOCHS))
    resumed_summary, whole_summary = read_json(run / "summary.json"), read_json(whole / "run" / "summary.json")
    assert resumed_summary["teacher"]["val_miou"] == whole_summary["teacher"]["val_miou"]
    assert resumed_summary["teacher"]["test_miou"] == whole_summary["teacher"]["test_miou"]
    assert comparable(resumed_summary) == comparable(whole_summary)
    resumed_losses = {e: m["loss"] for e, m in last_per_epoch(lines, "teacher").items()}
    whole_losses = {e: m["loss"] for e, m in last_per_epoch(metrics(whole / "run"), "teacher").items()}
    assert resumed_losses == whole_losses
    resumed_weights = load_checkpoint(run / "last_teacher.pth.tar")["state_dict"]
    whole_weights = load_checkpoint(whole / "run" / "last_teacher.pth.tar")["state_dict"]
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)


def test_a_run_killed_while_writing_pseudo_labels_leaves_only_whole_files_and_completes_them(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    data_root = make_street_scenes(tmp_path_factory.mktemp("frames"), counts={"train": 4, "val": 2, "test": 2},
                                   unlabeled=FRAMES, size=FRAME_SIZE)
    frames = sorted(p.stem for p in (data_root / "unlabeled" / "train").glob("*.png"))
    assert len(frames) == FRAMES
    pseudo_root = tmp_path / "pseudo"
    folder = pseudo_root / "train_pseudoIt1"
    args = cam_args(data_root, tmp_path, image_scale=1, no_iter=1, pseudo_epochs=1, finetune_epochs=1,
                    eval_batch_size=2, pseudo_root=pseudo_root)

    log = tmp_path / "killed.log"
    proc = launch("semisup_cam.py", args, log)
    wait_until(lambda: len(list(folder.glob("*.png"))) >= 6, proc, log, "the first pseudo-labels")
    kill(proc)

    written = sorted(folder.glob("*.png"))
    assert 0 < len(written) < FRAMES, f"labeling was not interrupted ({len(written)} of {FRAMES} written)"
    inodes = {}
    for path in written:  # a kill mid-write leaves a hidden .NAME.png.*.tmp, never a partial NAME.png
        with Image.open(path) as image:
            image.load()
            assert image.size == FRAME_SIZE and image.mode == "L", path
        inodes[path.name] = path.stat().st_ino

    semisup_cam.main(args)  # the same command, to the end
    pngs = sorted(folder.glob("*.png"))
    assert [p.stem for p in pngs] == frames  # exactly one pseudo-label per frame, no strays
    for path in pngs:
        with Image.open(path) as image:
            image.load()
            assert image.size == FRAME_SIZE and image.mode == "L", path
    assert not list(folder.glob(".*.tmp")), "temporary files of the killed run were left behind"
    # Whole files of the killed run were kept, not written again.
    assert {name: (folder / name).stat().st_ino for name in inodes} == inodes
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["finished"] and [e["iteration"] for e in summary["iterations"]] == [1]
    assert not (data_root / "unlabeled" / "train_pseudoIt1").exists()


# ----------------------------------------------------------------------------- bad input

def _remove_first(folder: Path) -> None:
    sorted(folder.glob("*.png"))[0].unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _first(data: Path, folder: str) -> Path:
    return sorted((data / folder).glob("*.png"))[0]


def _label_of_size(data: Path, size: tuple[int, int]) -> None:
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(_first(data, "train_labels"))


def _label_value(data: Path, value: int) -> None:
    path = _first(data, "train_labels")
    label = np.array(Image.open(path))
    label[0, 0] = value
    Image.fromarray(label).save(path)


def _colour_mask(data: Path) -> None:
    path = _first(data, "val_labels")
    Image.new("RGB", SIZE, (128, 64, 128)).save(path)  # the Road colour of a raw CamVid mask


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


def _a_file(work: Path) -> Path:
    """A regular file: a folder below it cannot be made, not even by root."""
    path = work / "afile"
    path.write_text("not a folder\n")
    return path


def _cam(data: Path, work: Path, **overrides: Any) -> None:
    semisup_cam.main(cam_args(data, work, **overrides))


def _cam_on_missing_gpu(data: Path, work: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _cam(data, work, device="cuda")


def _cif(root: Path, work: Path, **overrides: Any) -> None:
    settings = {"data_root": root, "device": "cpu", "width": 8, "val_size": 20, "batch_size": 16,
                "teacher_epochs": 1, "no_iter": 0, "save_dir": work / "ckpt", "run_dir": work / "run"}
    settings.update(overrides)
    semisup_cif.main([f"--{name}={value}" for name, value in settings.items()])


def _cifar_with(root: Path, name: str, entry: Any) -> Path:
    make_cifar_like(root, n_train=100, n_test=20)
    with open(root / CIFAR_FOLDER / name, "wb") as f:
        pickle.dump(entry, f)
    return root


def _offline_cifar(data: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_: Any, **__: Any) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(cifar.torchvision.datasets, "CIFAR10", offline)  # the test never reaches the network
    (work / "empty").mkdir()
    _cif(work / "empty", work)


def _checkpoint_of_5_classes(work: Path) -> None:
    path = work / "five.pth.tar"
    save_checkpoint(path, state_dict=SwiftNet(5, *STATISTICS["camvid"]).state_dict())
    load_weights(SwiftNet(11, *STATISTICS["camvid"]), load_checkpoint(path), path)


# (id, act(data, work, monkeypatch), the message must match). `data` is a private tiny CamVid copy.
BAD_INPUT: list[tuple[str, Callable[[Path, Path, pytest.MonkeyPatch], None], str]] = [
    ("missing_data_folder", lambda d, w, m: _cam(w / "nowhere", w),
     r"nowhere/train does not exist.*thesis layout.*--demo"),
    ("empty_folder", lambda d, w, m: (_empty(d / "train"), _cam(d, w)),
     r"camvid/train holds no images.*DATA_ROOT"),
    ("image_without_label", lambda d, w, m: (_remove_first(d / "train_labels"), _cam(d, w)),
     r"synth_train_0000\.png has no label in .*train_labels.*mask_maker"),
    ("label_without_image", lambda d, w, m: (_remove_first(d / "val"), _cam(d, w)),
     r"val_labels/synth_val_0000\.png has no image in .*Remove it or add the image"),
    ("truncated_image_png", lambda d, w, m: (_truncate(_first(d, "test")), _cam(d, w)),
     r"test/synth_test_0000\.png cannot be read.*damaged or truncated"),
    ("truncated_label_png", lambda d, w, m: (_truncate(_first(d, "train_labels")), _cam(d, w)),
     r"train_labels/synth_train_0000\.png cannot be read.*damaged or truncated"),
    ("label_of_another_size", lambda d, w, m: (_label_of_size(d, (32, 24)), _cam(d, w)),
     r"synth_train_0000\.png is 32x24 but its image is 64x48"),
    ("label_value_above_void", lambda d, w, m: (_label_value(d, 40), _cam(d, w)),
     r"synth_train_0000\.png holds the value 40, but its valid values are 0\.\.11.*mask_maker"),
    ("rgb_colour_mask", lambda d, w, m: (_colour_mask(d), _cam(d, w)),
     r"synth_val_0000\.png is a RGB image.*single-channel.*python data/mask_maker\.py"),
    ("unlabeled_folder_missing", lambda d, w, m: (shutil.rmtree(d / "unlabeled"), _cam(d, w, no_iter=1)),
     r"unlabeled/train does not exist.*NO_ITER.*extract_frames\.py.*--labeled_fraction=1/8.*--no_iter=0"),
    ("unlabeled_folder_empty", lambda d, w, m: (_empty(d / "unlabeled" / "train"), _cam(d, w, no_iter=1)),
     r"unlabeled/train holds no images.*NO_ITER.*extract_frames\.py"),
    ("checkpoint_missing", lambda d, w, m: load_checkpoint(w / "teacher_best.pth.tar"),
     r"teacher_best\.pth\.tar does not exist.*SAVE_DIR"),
    ("checkpoint_corrupt", lambda d, w, m: ((w / "c.pth.tar").write_bytes(b"\x80\x02garbage"),
                                            load_checkpoint(w / "c.pth.tar")),
     r"c\.pth\.tar is damaged or not a checkpoint \(Unsupported operand \d+\)\. "
     r"Restore a copy, or train it again: --resume=False starts its run over\.$"),
    ("checkpoint_of_other_classes", lambda d, w, m: _checkpoint_of_5_classes(w),
     r"five\.pth\.tar does not fit this model.*\(5, .*\(11, .*another number of classes"),
    ("unknown_constant", lambda d, w, m: _cam(d, w, batchsize=4),
     r"Unknown constant --batchsize\. Did you mean --batch_size\?"),
    ("mistyped_value", lambda d, w, m: _cam(d, w, batch_size="abc"),
     r"--batch_size=abc: expected an int like the default BATCH_SIZE = 12\."),
    ("mistyped_bool", lambda d, w, m: _cam(d, w, pretrained="maybe"),
     r"--pretrained=maybe: expected a bool.*PRETRAINED"),
    ("run_dir_below_a_file", lambda d, w, m: _cam(d, w, run_dir=_a_file(w) / "run"),
     r"Cannot write into RUN_DIR=.*afile/run \(Not a directory\).*--run_dir=PATH"),
    ("save_dir_below_a_file", lambda d, w, m: _cam(d, w, save_dir=_a_file(w) / "ckpt"),
     r"Cannot write into SAVE_DIR=.*afile/ckpt \(Not a directory\).*--save_dir=PATH"),
    ("labeled_fraction_zero", lambda d, w, m: _cam(d, w, labeled_fraction=0),
     r"--labeled_fraction=0\.0: the share of the train images that keeps its labels, in \(0, 1\]"),
    ("mean_teacher_without_soft_targets", lambda d, w, m: _cam(d, w, pseudo_ema=0.99, student_init="teacher"),
     r"--pseudo_ema=0\.99 moves the teacher that gives PSEUDO_SOFT's targets.*--pseudo_soft=True and "
     r"--student_init=teacher"),
    ("mean_teacher_of_a_fresh_student", lambda d, w, m: _cif(d, w, pseudo_ema=0.99, pseudo_soft=True),
     r"--pseudo_ema=0\.99 .*--student_init=teacher \(a fresh student's weights cannot be averaged"),
    ("mean_teacher_momentum_of_one", lambda d, w, m: _cam(d, w, pseudo_ema=1, pseudo_soft=True),
     r"--pseudo_ema=1\.0: the momentum of the mean teacher, at least 0 \(off\) and below 1"),
    ("cuda_without_gpu", lambda d, w, m: _cam_on_missing_gpu(d, w),
     r"DEVICE=cuda but PyTorch sees no GPU.*--device=cpu"),
    ("cifar_files_missing_offline", lambda d, w, m: _offline_cifar(d, w, m),
     r"Could not download CIFAR-10 \(network is unreachable\).*empty/cifar-10-batches-py/data_batch_1"),
    ("cifar_files_missing_no_download", lambda d, w, m: load_cifar10(w, download=False),
     r"CIFAR-10 files are missing.*cifar-10-batches-py/data_batch_1.*tar -xzf"),
    ("cifar_file_of_wrong_shape",
     lambda d, w, m: _cif(_cifar_with(w / "cifar", "data_batch_2",
                                      {b"data": np.zeros((10, 32 * 32), np.uint8), b"labels": [0] * 10}), w),
     r"data_batch_2: b'data' must be a uint8 array of shape \(N, 3072\), found uint8 \(10, 1024\)"),
    ("cifar_file_not_a_pickle",
     lambda d, w, m: (make_cifar_like(w / "cifar", n_train=100, n_test=20),
                      (w / "cifar" / CIFAR_FOLDER / "test_batch").write_bytes(bytes(range(256)) * 4),
                      _cif(w / "cifar", w)),
     r"test_batch is not a CIFAR-10 pickle.*cifar-10-python\.tar\.gz"),
]


@pytest.mark.parametrize("act, message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_stops_with_a_message_naming_the_file_or_constant(
        act: Callable[[Path, Path, pytest.MonkeyPatch], None], message: str, data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserError, match=f"(?s){message}"):
        act(data, work, monkeypatch)


def test_a_pretrained_path_that_does_not_exist_is_a_user_error(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="PRETRAINED_PATH"):
        _cam(data, tmp_path, pretrained=True, pretrained_path=tmp_path / "resnet18.pth")


def test_a_pretrained_path_without_pretrained_stops_before_the_run_directory_records_it(data: Path,
                                                                                      tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"a state dict")
    with pytest.raises(UserError, match=r"--pretrained=False trains from scratch: set --pretrained=True"):
        _cam(data, tmp_path, pretrained=False, pretrained_path=weights)
    assert not (tmp_path / "run").exists()


def test_an_unwritable_pseudo_root_stops_before_the_teacher_trains(data: Path, tmp_path: Path) -> None:
    loop = {"no_iter": 1, "pseudo_epochs": 1, "finetune_epochs": 1}
    with pytest.raises(UserError, match=r"Cannot write into PSEUDO_ROOT=.*afile/pseudo "
                                        r"\(Not a directory\).*--pseudo_root=PATH"):
        _cam(data, tmp_path, pseudo_root=_a_file(tmp_path) / "pseudo", **loop)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no teacher epoch was spent before the error
    _cam(data, tmp_path, pseudo_root=tmp_path / "pseudo", **loop)  # what the message says to do
    assert len(list((tmp_path / "pseudo" / "train_pseudoIt1").glob("*.png"))) == 3
    assert read_json(tmp_path / "run" / "summary.json")["finished"]


def test_a_read_only_output_folder_is_a_user_error(data: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions do not stop this user (root): see run_dir_below_a_file")
        with pytest.raises(UserError, match=r"Cannot write the run directory .*locked/run.*--run_dir=PATH"):
            _cam(data, tmp_path, run_dir=locked / "run")
        with pytest.raises(UserError, match=r"SAVE_DIR=.*locked/ckpt.*--save_dir=PATH"):
            _cam(data, tmp_path, save_dir=locked / "ckpt")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=abc"], r"--batch_size=abc: expected an int like the default BATCH_SIZE"),
    (["--data_root=/nonexistent/camvid", "--device=cpu", "--pretrained=False"],
     r"/nonexistent/camvid/train does not exist"),
], ids=["mistyped_value", "missing_data_folder"])
def test_the_script_prints_the_message_without_a_traceback(argv: list[str], message: str, tmp_path: Path) -> None:
    argv = argv + [f"--run_dir={tmp_path / 'run'}", f"--save_dir={tmp_path / 'ckpt'}"]
    done = subprocess.run([sys.executable, "semisup_cam.py", *argv], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=WAIT_S)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and re.search(message, done.stderr), done.stderr


# ----------------------------------------------------------------------------- another config, resume

def test_another_config_in_a_run_dir_names_the_keys_and_resume_false_starts_over(data: Path, tmp_path: Path) -> None:
    _cam(data, tmp_path)
    with pytest.raises(UserError, match=r"(?s)holds a run with another config \(batch_size: 4 there, 2 now, "
                                        r"crop_size: 32 there, 24 now\).*--run_dir.*--resume=False"):
        _cam(data, tmp_path, batch_size=2, crop_size=24)
    # Where the pseudo-labels go is not part of the experiment: changing it still resumes the run.
    _cam(data, tmp_path, pseudo_root=tmp_path / "elsewhere")

    _cam(data, tmp_path, batch_size=2, crop_size=24, teacher_epochs=2, resume=False)
    run = tmp_path / "run"
    config = read_json(run / "config.json")
    assert (config["batch_size"], config["crop_size"], config["resume"]) == (2, 24, False)
    assert [m["epoch"] for m in metrics(run)] == [1, 2]  # the old run's lines are gone
    assert read_json(run / "progress.json")["phases"]["teacher"]["epochs"] == 2


def test_a_mistyped_choice_stops_before_the_run_directory_records_it(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--student_schedule=jiont: expected 'staged' or 'joint'"):
        _cam(data, tmp_path, student_schedule="jiont")
    assert not (tmp_path / "run").exists()


# A value outside what each constant means, and the words of its refusal.
OUT_OF_RANGE = [
    ("image_scale", 0, r"a positive factor"), ("image_scale", -0.5, r"a positive factor"),
    ("pseudo_threshold", 1.5, r"a confidence between 0 \(keep everything\) and 1"),
    ("pseudo_threshold", "nan", r"a confidence between 0"),
    ("batch_size", 1, r"at least 2"), ("eval_each", 0, r"at least 1"), ("eval_batch_size", 0, r"at least 1"),
    ("tta_scales", "", r"one or more positive scales"), ("tta_scales", "0,1", r"one or more positive scales"),
    ("crop_size", 0, r"the side of the square training crops"), ("teacher_lr", "nan", r"a learning rate, 0 or more"),
    ("finetune_lr", -1e-3, r"a learning rate, 0 or more"), ("teacher_epochs", 0, r"at least 1"),
    ("pseudo_epochs", -2, r"at least 1"), ("no_iter", -1, r"0 \(the teacher alone\) or more"),
    ("labeled_fraction", 1.5, r"in \(0, 1\]"), ("weight_decay", "inf", r"0 or more"),
]


@pytest.mark.parametrize("name, value, allowed", OUT_OF_RANGE, ids=[f"{n}={v}" for n, v, _ in OUT_OF_RANGE])
def test_a_constant_out_of_its_range_is_refused_before_anything_is_written(data: Path, tmp_path: Path, name: str,
                                                                          value: Any, allowed: str) -> None:
    with pytest.raises(UserError, match=f"^--{name}=.*: .*{allowed}"):
        _cam(data, tmp_path, **{name: value})
    assert not (tmp_path / "run").exists() and not (tmp_path / "ckpt").exists()


def test_a_damaged_pretrained_path_is_named(data: Path, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(UserError, match=r"PRETRAINED_PATH=.*resnet18\.pth cannot be read as a state dict"):
        _cam(data, tmp_path, pretrained=True, pretrained_path=weights)


def test_a_run_from_before_a_new_constant_resumes_while_that_constant_keeps_its_default(data: Path,
                                                                                       tmp_path: Path) -> None:
    _cam(data, tmp_path)
    config_path = tmp_path / "run" / "config.json"
    older = {k: v for k, v in read_json(config_path).items() if k != "student_init"}  # as older code wrote it
    config_path.write_text(json.dumps(older))
    _cam(data, tmp_path)  # STUDENT_INIT keeps its default: the same experiment
    config_path.write_text(json.dumps(older))
    with pytest.raises(UserError, match=r"another config \(student_init: None there, 'teacher' now\)"):
        _cam(data, tmp_path, student_init="teacher")


def test_raising_no_iter_continues_a_finished_run_without_redoing_its_iterations(data: Path, tmp_path: Path) -> None:
    _cam(data, tmp_path, no_iter=1, pseudo_epochs=1, finetune_epochs=1)
    first = read_json(tmp_path / "run" / "summary.json")
    assert first["finished"] and [e["iteration"] for e in first["iterations"]] == [1]
    names = ("teacher_best.pth.tar", "student_it1_best.pth.tar")
    kept = {name: (tmp_path / "ckpt" / name).read_bytes() for name in names}
    logged = metrics(tmp_path / "run")

    _cam(data, tmp_path, no_iter=2, pseudo_epochs=1, finetune_epochs=1)
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["finished"] and [e["iteration"] for e in summary["iterations"]] == [1, 2]
    assert summary["iterations"][0] == first["iterations"][0] and summary["teacher"] == first["teacher"]
    assert {name: (tmp_path / "ckpt" / name).read_bytes() for name in kept} == kept  # not trained again
    assert (tmp_path / "ckpt" / "student_it2_best.pth.tar").is_file()
    assert read_json(tmp_path / "run" / "config.json")["no_iter"] == 2
    added = metrics(tmp_path / "run")[len(logged):]
    assert added and {m["phase"] for m in added} <= {"it2_pseudo", "it2_finetune"}


def test_a_run_refuses_its_best_checkpoint_after_another_run_replaced_it(data: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared_ckpt"
    short = dict(save_dir=shared, pseudo_epochs=1, finetune_epochs=1)
    _cam(data, tmp_path / "a", **short)
    own_id = read_json(tmp_path / "a" / "run" / "summary.json")["run_id"]
    assert load_checkpoint(shared / "teacher_best.pth.tar")["run_id"] == own_id
    _cam(data, tmp_path / "b", **short, seed=1)  # another experiment, the same SAVE_DIR
    other_id = load_checkpoint(shared / "teacher_best.pth.tar")["run_id"]
    assert other_id != own_id

    with pytest.raises(UserError, match=f"(?s)teacher_best.pth.tar was written by another run \\(run id {other_id}; "
                                        f".*is {own_id}\\).*own --save_dir.*--resume=False"):
        _cam(data, tmp_path / "a", **short, no_iter=1)
    assert read_json(tmp_path / "a" / "run" / "summary.json")["iterations"] == []


def test_a_teacher_checkpoint_of_another_run_is_not_refused(data: Path, tmp_path: Path) -> None:
    _cam(data, tmp_path / "a")
    given = tmp_path / "a" / "ckpt" / "teacher_best.pth.tar"
    _cam(data, tmp_path / "b", teacher_checkpoint=given, no_iter=1, pseudo_epochs=1, finetune_epochs=1)
    assert [e["iteration"] for e in read_json(tmp_path / "b" / "run" / "summary.json")["iterations"]] == [1]


def test_a_finished_run_is_chosen_again_only_for_more_iterations(tmp_path: Path) -> None:
    from utils.records import choose_run_dir

    done = tmp_path / "20261124-101500_cam"
    done.mkdir()
    config = {"run_dir": "", "resume": True, "seed": 0, "no_iter": 1}
    (done / "config.json").write_text(json.dumps(config))
    (done / "summary.json").write_text(json.dumps({"finished": True, "iterations": [{"iteration": 1}]}))
    assert choose_run_dir({**config, "no_iter": 3}, "cam", base=str(tmp_path)) == done
    assert choose_run_dir(config, "cam", base=str(tmp_path)) != done  # the same command starts a new run
    assert choose_run_dir({**config, "seed": 1, "no_iter": 3}, "cam", base=str(tmp_path)) != done


def test_a_resumed_run_keeps_the_code_versions_that_worked_on_it_before_any_phase_finished(tmp_path: Path) -> None:
    from utils.records import Run, code_version

    folder = tmp_path / "run"
    folder.mkdir()
    config = {"run_dir": str(folder), "resume": True}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "summary.json").write_text(json.dumps({"teacher": {}, "iterations": [], "timings_s": {},
                                                     "finished": False, "code_versions": ["0123456789ab"]}))
    run = Run(folder, config)
    assert run.summary["code_versions"] == ["0123456789ab", code_version()]
    assert run.summary["iterations"] == [] and run.summary["teacher"] == {}


def test_time_spent_before_a_kill_stays_in_the_timings_of_the_resumed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.records as records

    now = [100.0]
    monkeypatch.setattr(records.time, "perf_counter", lambda: now[0])
    config = {"run_dir": str(tmp_path / "run"), "resume": True}
    killed = records.Run(tmp_path / "run", config)
    block = killed.timed("teacher")
    block.__enter__()  # never left: the process is killed in the block
    now[0] = 103.0
    killed.log(phase="teacher", epoch=1)
    now[0] = 150.0  # the kill comes during epoch 2, which is never logged
    assert read_json(tmp_path / "run" / "summary.json")["timings_s"] == {"teacher": 3.0}

    resumed = records.Run(tmp_path / "run", config)
    with resumed.timed("teacher"):
        now[0] = 155.5
    with resumed.timed("it1_pseudo_label"):
        now[0] = 157.0
    assert read_json(tmp_path / "run" / "summary.json")["timings_s"] == {"teacher": 8.5, "it1_pseudo_label": 1.5}


def test_a_run_killed_before_any_phase_finished_still_names_the_code_that_started_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.records as records

    config = {"run_dir": str(tmp_path / "run"), "resume": True}
    monkeypatch.setattr(records, "code_version", lambda: "first0000000")
    records.Run(tmp_path / "run", config)  # killed at once: nothing else is written
    monkeypatch.setattr(records, "code_version", lambda: "second000000")
    records.Run(tmp_path / "run", config)
    assert read_json(tmp_path / "run" / "summary.json")["code_versions"] == ["first0000000", "second000000"]


# ----------------------------------------------------------------------------- divergence

def test_a_model_that_diverges_is_never_saved_and_the_message_says_nothing_was(tiny_scenes: Path,
                                                                               tmp_path: Path) -> None:
    # One step per epoch: epoch 1 reports the loss before its only step, which ruins the model. Its validation
    # score (every pixel one class) was once saved as the best checkpoint and pseudo-labeled from.
    with pytest.raises(TrainingDiverged, match=r"Training diverged in phase teacher, epoch 1: its (weights|logits).* "
                                               r"NaN or infinite\. Nothing of this phase was saved\. Lower the "
                                               r"learning rate"):
        _cam(tiny_scenes, tmp_path, teacher_epochs=3, teacher_lr=1e30)
    assert not (tmp_path / "ckpt" / "teacher_best.pth.tar").exists()
    assert not (tmp_path / "run" / "last_teacher.pth.tar").exists()
    assert "teacher" not in progress_of(tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # the diverged epoch is not recorded
    assert issubclass(TrainingDiverged, UserError)  # printed without a traceback


def test_divergence_after_a_good_epoch_keeps_the_last_good_state(tmp_path: Path) -> None:
    from utils.engine import Best, fit

    model = torch.nn.Linear(2, 2)
    batch = (torch.ones(4, 2), torch.zeros(4, dtype=torch.long))
    scale = [1.0]

    def step(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return torch.nn.functional.cross_entropy(net(batch[0]), batch[1]) * scale[0], {}

    def validate(m: torch.nn.Module) -> tuple[float, dict[str, Any]]:
        scale[0] = float("nan")  # the epoch after the first evaluation diverges
        return 50.0, {}

    run = Run(tmp_path / "run", {"run_dir": str(tmp_path / "run"), "resume": True, **FIT_CONFIG})
    with pytest.raises(TrainingDiverged, match=r"epoch 2: its loss became nan\. The last good state is kept in "
                                               r".*last_teacher\.pth\.tar; a re-run resumes from it") as caught:
        fit(model, "teacher", 0, lambda g: iter([batch]), 1, 3, step, torch.optim.SGD(model.parameters(), lr=0.1),
            Best(tmp_path / "ckpt" / "best.pth.tar", "val_iou"), validate, run, Runtime(torch.device("cpu")))
    last = load_checkpoint(tmp_path / "run" / "last_teacher.pth.tar")
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["state_dict"].values())
    named = [word.strip(".,;") for word in str(caught.value).split() if ".pth.tar" in word]
    assert named and all(Path(path).exists() for path in named)


# ----------------------------------------------------------------------------- determinism

def test_seeded_runs_repeat_and_another_seed_differs(tiny_scenes: Path, tmp_path: Path) -> None:
    def summary(name: str, **overrides: Any) -> tuple[dict[str, Any], list[float]]:
        work = tmp_path / name
        _cam(tiny_scenes, work, teacher_epochs=2, **overrides)
        return comparable(read_json(work / "run" / "summary.json")), [m["loss"] for m in metrics(work / "run")]

    first, again, other = summary("first"), summary("again"), summary("other", seed=1)
    assert first == again
    assert other[1] != first[1] and other[0]["teacher"] != first[0]["teacher"]


# ----------------------------------------------------------------------------- safe loading

def _python_files() -> list[Path]:
    skip = {".venv", ".git", "runs", "saved_models", "__pycache__", ".pytest_cache"}
    return [p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts)]


def _is_torch_load(call: ast.Call) -> bool:
    """torch.load(...) or torch.serialization.load(...)."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "load"):
        return False
    owner = func.value
    return (isinstance(owner, ast.Name) and owner.id == "torch") or (
        isinstance(owner, ast.Attribute) and owner.attr == "serialization")


def test_every_torch_load_in_the_repo_uses_weights_only() -> None:
    calls, unsafe = 0, []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
                # A bare `load(...)` would escape the scan below.
                if any(alias.name == "load" for alias in node.names):
                    unsafe.append(f"{where} imports load from {node.module}")
            elif isinstance(node, ast.Call) and _is_torch_load(node):
                calls += 1
                if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords):
                    unsafe.append(f"{where} calls torch.load without weights_only=True")
    assert calls >= 2  # utils/checkpoint.py and models/swiftnet.py at least: the scan does find them
    assert not unsafe, unsafe
