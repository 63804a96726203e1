"""The state a run keeps on disk, under faults: folders held by one run at a time, state that is rebuilt
when missing or damaged, a full disk, Ctrl-C, and leftovers of writes that a kill cut short."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import semisup_cam
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.io import append_jsonl
from utils.records import Run

from conftest import Killed, train_two_epochs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def measured(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in ("teacher", "iterations", "finished")}


@pytest.fixture
def holder(tmp_path: Path) -> Callable[[Path], subprocess.Popen]:
    """Another process that holds a folder, as a run that is going on there would."""
    processes: list[subprocess.Popen] = []

    def hold(folder: Path) -> subprocess.Popen:
        code = ("import sys, time; from pathlib import Path; from utils.io import lock_folder; "
                "lock_folder(Path(sys.argv[1]), 'the run runs/other (process 4242 on elsewhere)'); "
                "print('held', flush=True); time.sleep(120)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "held"
        processes.append(proc)
        return proc

    yield hold
    for proc in processes:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- one run per folder

@pytest.mark.parametrize("constant", ["pseudo_root", "run_dir", "save_dir"])
def test_a_folder_another_run_is_using_is_refused_naming_that_run(
        scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]], holder: Any, constant: str) -> None:
    args = dict(no_iter=1, pseudo_epochs=1, finetune_epochs=1, pseudo_root=tmp_path / "pseudo")
    other = holder(tmp_path / {"pseudo_root": "pseudo", "run_dir": "run", "save_dir": "ckpt"}[constant])
    with pytest.raises(UserError, match=rf"^{constant.upper()}=.* is in use by the run runs/other \(process 4242 "
                                        r"on elsewhere\): .*(--|wait)"):
        semisup_cam.main(main_args(scenes, tmp_path, **args))
    assert not (tmp_path / "pseudo" / "train_pseudoIt1").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    other.kill()
    other.wait()  # the system lets go of a killed process's folders
    semisup_cam.main(main_args(scenes, tmp_path, **args))
    assert read_json(tmp_path / "run" / "summary.json")["finished"]


# ----------------------------------------------------------------------------- state that is rebuilt

@pytest.fixture
def finished_run(tmp_path: Path, tiny_scenes: Path,
                 main_args: Callable[..., list[str]]) -> tuple[Path, list[str], dict[str, Any]]:
    """A finished run of a teacher and one staged iteration, its command, and what it measured."""
    work = tmp_path / "work"
    args = main_args(tiny_scenes, work, no_iter=1, pseudo_epochs=1, finetune_epochs=1, pseudo_root=work / "pseudo")
    semisup_cam.main(args)
    return work, args, read_json(work / "run" / "summary.json")


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished phase was trained again")

    monkeypatch.setattr("utils.engine.train_one_epoch", refuse)


@pytest.mark.parametrize("record, damage", [("summary.json", "delete"), ("summary.json", "garble"),
                                            ("progress.json", "delete"), ("progress.json", "garble")])
def test_a_missing_or_damaged_record_is_rebuilt_without_training_again(
        finished_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        record: str, damage: str) -> None:
    work, args, _ = finished_run
    path = work / "run" / record
    path.unlink() if damage == "delete" else path.write_text('{"teach')
    no_training(monkeypatch)
    semisup_cam.main(args)
    assert f"note: {path} was missing or damaged" in capsys.readouterr().out
    summary = read_json(work / "run" / "summary.json")
    assert measured(summary) == measured(finished_run[2]) and summary["run_id"] == finished_run[2]["run_id"]
    assert set(read_json(work / "run" / "progress.json")["phases"]) == {"teacher", "it1_pseudo", "it1_finetune"}


def test_a_damaged_config_json_is_taken_from_the_checkpoints(finished_run: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    work, args, _ = finished_run
    (work / "run" / "config.json").write_text("{half a file")
    with pytest.raises(UserError, match=r"holds a run with another config \(batch_size: 4 there, 2 now"):
        semisup_cam.main(args + ["--batch_size=2"])  # the checkpoints still know the run's config
    no_training(monkeypatch)
    semisup_cam.main(args)
    assert read_json(work / "run" / "config.json")["batch_size"] == 4


def test_a_finished_phase_whose_weights_are_lost_is_trained_again_to_the_same_result(
        finished_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    work, args, _ = finished_run
    # The finetuning needs the pseudo phase's final weights: as if it had stopped before starting.
    run = work / "run"
    progress = read_json(run / "progress.json")
    del progress["phases"]["it1_finetune"]
    (run / "progress.json").write_text(json.dumps(progress))
    summary = read_json(run / "summary.json")
    summary["iterations"] = []
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "last_it1_finetune.pth.tar").unlink()
    (run / "last_it1_pseudo.pth.tar").write_bytes(b"damaged")
    semisup_cam.main(args)
    assert "The finished phase it1_pseudo is trained again" in capsys.readouterr().out
    assert measured(read_json(run / "summary.json")) == measured(finished_run[2])


def test_a_damaged_resume_checkpoint_starts_its_phase_over(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(4, 3, 5, 5, generator=generator), torch.randint(0, 3, (4, 5, 5), generator=generator)

    torch.manual_seed(0)
    whole = torch.nn.Conv2d(3, 3, 1)
    start = {k: v.clone() for k, v in whole.state_dict().items()}
    train_two_epochs(whole, batch, tmp_path / "whole")
    resumed = torch.nn.Conv2d(3, 3, 1)
    resumed.load_state_dict(start)
    with pytest.raises(Killed):
        train_two_epochs(resumed, batch, tmp_path / "killed", stop_in_epoch=2)
    (tmp_path / "killed" / "run" / "last_it1_joint.pth.tar").write_bytes(b"damaged")
    resumed.load_state_dict(start)
    train_two_epochs(resumed, batch, tmp_path / "killed")
    assert "The phase it1_joint starts over" in capsys.readouterr().out
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in whole.state_dict().items())
    assert [m["epoch"] for m in metrics(tmp_path / "killed" / "run")] == [1, 2]


def test_an_epoch_trained_again_after_a_resume_is_logged_once(tmp_path: Path) -> None:
    def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(4, 3, 5, 5, generator=generator), torch.randint(0, 3, (4, 5, 5), generator=generator)

    model = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(Killed):
        train_two_epochs(model, batch, tmp_path, stop_in_epoch=2)
    # Killed after epoch 2 was logged but before its checkpoint was written:
    append_jsonl(tmp_path / "run" / "metrics.jsonl", {"phase": "it1_joint", "iteration": 1, "epoch": 2, "loss": 9.0})
    train_two_epochs(model, batch, tmp_path)
    lines = metrics(tmp_path / "run")
    assert [m["epoch"] for m in lines] == [1, 2] and lines[-1]["loss"] != 9.0


def test_a_damaged_summary_does_not_start_the_run_over_in_a_new_folder(
        tiny_scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        main_args: Callable[..., list[str]]) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ is made here when RUN_DIR is not given
    args = [arg for arg in main_args(tiny_scenes, tmp_path, no_iter=1, pseudo_epochs=1, finetune_epochs=1,
                                     pseudo_root=tmp_path / "pseudo") if not arg.startswith("--run_dir")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("semisup_cam.label_frames", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(UserError, match="Stopped by Ctrl-C"):
            semisup_cam.main(args)  # stopped after the teacher
    (folder,) = (tmp_path / "runs").iterdir()
    (folder / "summary.json").write_text("{damaged")
    no_training_of_the_teacher = len(metrics(folder))
    semisup_cam.main(args)
    assert list((tmp_path / "runs").iterdir()) == [folder]
    assert [m["phase"] for m in metrics(folder)][:no_training_of_the_teacher] == ["teacher"]
    assert "teacher" not in [m["phase"] for m in metrics(folder)][no_training_of_the_teacher:]
    assert read_json(folder / "summary.json")["finished"]


# ----------------------------------------------------------------------------- full disk, Ctrl-C, leftovers

def run_limited(args: list[str], file_size_limit: int) -> subprocess.CompletedProcess:
    """semisup_cam.py in a process that cannot write files larger than the limit: a disk that fills up."""
    code = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, resource.RLIM_INFINITY)); "
            "sys.argv = sys.argv[1:]; runpy.run_path('semisup_cam.py', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, "semisup_cam.py", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_while_saving_a_checkpoint_gives_one_line_and_the_same_command_resumes(
        tiny_scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    args = main_args(tiny_scenes, tmp_path, teacher_epochs=2)
    done = run_limited(args, 1 << 20)  # a checkpoint is about 47 MB
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert re.search(r"error: Cannot write checkpoint .*teacher_best\.pth\.tar \(.*\)\. The previous file is kept: "
                     r"free some disk space in .*ckpt and run the same command again", done.stderr), done.stderr
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))
    semisup_cam.main(args)
    assert read_json(tmp_path / "run" / "summary.json")["finished"]


def test_a_record_that_cannot_be_written_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run(tmp_path / "run", {"run_dir": str(tmp_path / "run"), "resume": True})

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("utils.records.write_json", full)
    with pytest.raises(UserError, match=r"Cannot write .*run/summary\.json \(No space left on device\)\. Free some "
                                        r"disk space and run the same command again: it resumes"):
        run.save_summary()


def test_a_metrics_line_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    code = ("import resource, signal, sys; from utils.io import append_jsonl; "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY)); "
            "append_jsonl(sys.argv[1], {'epoch': 2, 'padding': 'x' * 200})")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(path.stat().st_size + 20)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "No space left on device" in done.stderr  # a short write
    append_jsonl(path, {"epoch": 3})  # once there is space again
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 3]


def test_ctrl_c_prints_one_line_that_says_where_and_the_same_command_resumes(
        tiny_scenes: Path, tmp_path: Path, main_args: Callable[..., list[str]]) -> None:
    args = main_args(tiny_scenes, tmp_path, teacher_epochs=40)
    # A background job's children ignore SIGINT: give the run the default a terminal gives it.
    proc = subprocess.Popen([sys.executable, "semisup_cam.py", *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "last_teacher.pth.tar").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr[-2000:]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert re.fullmatch(r"error: Stopped by Ctrl-C in teacher \(teacher, after epoch \d+\)\. The same command resumes "
                        r"the run .*/run from its last checkpoint\.", last.split("\r")[-1]), last
    epochs_before = len(metrics(tmp_path / "run"))
    semisup_cam.main(args)
    lines = metrics(tmp_path / "run")
    assert [m["epoch"] for m in lines] == list(range(1, 41)) and len(lines) >= epochs_before


def test_temporary_files_of_killed_saves_are_removed_from_save_dir(scenes: Path, tmp_path: Path,
                                                                  main_args: Callable[..., list[str]]) -> None:
    leftover = tmp_path / "ckpt" / ".teacher_best.pth.tar.k2j3h4.tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"\0" * 1000)
    semisup_cam.main(main_args(scenes, tmp_path))
    assert not leftover.exists() and (tmp_path / "ckpt" / "teacher_best.pth.tar").is_file()
    assert load_checkpoint(tmp_path / "ckpt" / "teacher_best.pth.tar")["epoch"] == 1
