"""Every way a run can be stopped, and whether the same command then ends as an uninterrupted run.

    python bench/kill_matrix.py [--out DIR]

A tiny CamVid run (generated scenes; a teacher, then one staged iteration) is run once whole, then
once per case: SIGKILL in each phase (and in an online UniMatch student with a mean teacher, against
its own whole run), during pseudo-label writing and during a checkpoint write,
Ctrl-C (SIGINT), and a full disk under RUN_DIR, SAVE_DIR and PSEUDO_ROOT (small tmpfs mounts, which
need root; skipped otherwise, then grown as a user would free space). After each stop the same
command is run again until it finishes; its summary, per-epoch metrics, final and best weights and
pseudo-label files are compared with the whole run's. Prints a table and writes DIR/kill_matrix.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data.synthetic import make_street_scenes  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SETTINGS = {"device": "cpu", "pretrained": False, "batch_size": 4, "crop_size": 48, "eval_batch_size": 4,
            "teacher_epochs": 4, "eval_each": 1, "no_iter": 1, "pseudo_epochs": 3, "finetune_epochs": 3,
            "pictures": 0}
ONLINE = {"student_schedule": "unimatch", "pseudo_ema": 0.9, "student_init": "teacher", "pseudo_threshold": 0.5}


def command(data: Path, work: Path, extra: dict[str, Any] | None = None) -> list[str]:
    folders = {"run_dir": work / "fs_run" / "run", "save_dir": work / "fs_save" / "ckpt",
               "pseudo_root": work / "fs_pseudo" / "pseudo"}
    return [f"--{k}={v}" for k, v in {"data_root": data, **SETTINGS, **(extra or {}), **folders}.items()]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    # A shell's background job ignores SIGINT, and its children inherit that: give Ctrl-C back its default.
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "semisup_cam.py", *args], cwd=REPO, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_when(args: list[str], log: Path, ready: Callable[[], bool], sig: int) -> str:
    """Runs the command and sends `sig` once `ready()`; returns how it went."""
    proc = launch(args, log)
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            return "finished before the stop"
        if time.monotonic() > deadline:
            proc.kill()
            return "timed out"
        time.sleep(0.002)
    proc.send_signal(sig)
    return "finished despite the signal" if proc.wait() == 0 else "stopped"


def last_lines(log: Path, count: int = 1) -> str:
    lines = [line.split("\r")[-1] for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def state(work: Path) -> dict[str, Any]:
    """What a finished run measured and kept, without times, ids and its own folder names."""
    run, ckpt, pseudo = work / "fs_run" / "run", work / "fs_save" / "ckpt", work / "fs_pseudo" / "pseudo"
    summary = json.loads((run / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if k not in ("timings_s", "run_id", "code_versions")}
    summary["current_teacher"] = Path(summary["current_teacher"]).name
    epochs = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        epochs.setdefault((entry["phase"], entry["epoch"]), []).append(
            {k: v for k, v in entry.items() if k != "seconds"})
    weights = {}
    for path in sorted(run.glob("last_*.pth.tar")) + sorted(ckpt.glob("*_best.pth.tar")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        weights[path.name] = checkpoint["state_dict"]
        if "mean_teacher" in checkpoint:
            weights[f"{path.name}, mean teacher"] = checkpoint["mean_teacher"]
    labels = {p.name: p.read_bytes() for p in sorted((pseudo / "train_pseudoIt1").glob("*.png"))}
    return {"summary": summary, "epochs": epochs, "weights": weights, "labels": labels}


def compare(got: dict[str, Any], whole: dict[str, Any]) -> list[str]:
    """What differs from the whole run: empty when the run ended bit-identical to it."""
    differences = []
    if got["summary"] != whole["summary"]:
        differences.append("summary")
    if any(len(lines) != 1 for lines in got["epochs"].values()):
        differences.append("an epoch logged twice")
    if {k: v[-1] for k, v in got["epochs"].items()} != {k: v[-1] for k, v in whole["epochs"].items()}:
        differences.append("metrics")
    if got["weights"].keys() != whole["weights"].keys() or any(
            not torch.equal(t, whole["weights"][name][key]) for name, sd in got["weights"].items()
            for key, t in sd.items()):
        differences.append("weights")
    if got["labels"] != whole["labels"]:
        differences.append("pseudo-labels")
    return differences


def temporary_file(*folders: Path) -> Callable[[], bool]:
    return lambda: any(any(folder.glob(".*.tmp")) for folder in folders if folder.is_dir())


def mount(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "kill_matrix")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    data = make_street_scenes(out / "data", counts={"train": 8, "val": 4, "test": 4}, unlabeled=40, size=(96, 72))

    def work_of(name: str) -> Path:
        return out / name

    wholes: dict[str, dict[str, Any]] = {}

    def reference(extra: dict[str, Any]) -> dict[str, Any]:
        """The state of the uninterrupted run of these settings, run the first time it is asked for."""
        name = "whole" + "".join(f"_{v}" for v in extra.values())
        if name not in wholes:
            began = time.perf_counter()
            assert subprocess.run([sys.executable, "semisup_cam.py", *command(data, work_of(name), extra)], cwd=REPO,
                                  env=ENV, capture_output=True).returncode == 0, f"the uninterrupted {name} failed"
            wholes[name] = {"seconds": round(time.perf_counter() - began, 1), "state": state(work_of(name))}
        return wholes[name]["state"]

    def in_phase(work: Path, phase: str) -> Callable[[], bool]:
        return lambda: (work / "fs_run" / "run" / f"last_{phase}.pth.tar").is_file()

    def labels_written(work: Path) -> Callable[[], bool]:
        folder = work / "fs_pseudo" / "pseudo" / "train_pseudoIt1"
        return lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= 5

    cases: list[tuple[str, Any, int, dict[str, str], dict[str, Any]]] = [
        ("SIGKILL in the teacher", lambda w: in_phase(w, "teacher"), signal.SIGKILL, {}, {}),
        ("SIGKILL while writing pseudo-labels", labels_written, signal.SIGKILL, {}, {}),
        ("SIGKILL in the student's pseudo phase", lambda w: in_phase(w, "it1_pseudo"), signal.SIGKILL, {}, {}),
        ("SIGKILL in the student's fine-tuning", lambda w: in_phase(w, "it1_finetune"), signal.SIGKILL, {}, {}),
        ("SIGKILL in an online student (UniMatch, mean teacher)", lambda w: in_phase(w, "it1_unimatch"),
         signal.SIGKILL, {}, ONLINE),
        ("SIGKILL while writing a checkpoint",
         lambda w: temporary_file(w / "fs_run" / "run", w / "fs_save" / "ckpt"), signal.SIGKILL, {}, {}),
        ("Ctrl-C (SIGINT) in the teacher", lambda w: in_phase(w, "teacher"), signal.SIGINT, {}, {}),
        ("Ctrl-C (SIGINT) while writing pseudo-labels", labels_written, signal.SIGINT, {}, {}),
        ("full disk under RUN_DIR", None, 0, {"fs_run": "2m"}, {}),
        ("full disk under SAVE_DIR", None, 0, {"fs_save": "2m"}, {}),
        ("full disk under PSEUDO_ROOT", None, 0, {"fs_pseudo": "16k"}, {}),
    ]
    rows = []
    for name, trigger, sig, small, extra in cases:
        work = work_of(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"))
        log = work / "log.txt"
        work.mkdir(parents=True)
        row: dict[str, Any] = {"case": name}
        if small:
            if not all(mount(work / folder, size) for folder, size in small.items()):
                rows.append({**row, "result": "skipped: mounting a tmpfs needs root"})
                continue
            code = subprocess.run([sys.executable, "semisup_cam.py", *command(data, work, extra)], cwd=REPO, env=ENV,
                                  capture_output=True, text=True)
            row["stop"] = "the disk filled up" if code.returncode else "finished: the disk never filled up"
            row["message"] = code.stderr.strip().splitlines()[-1] if code.stderr.strip() else ""
            for folder in small:  # the user frees space
                subprocess.run(["mount", "-o", "remount,size=1g", str(work / folder)], check=True)
        else:
            row["stop"] = stop_when(command(data, work, extra), log, trigger(work), sig)
            row["message"] = last_lines(log) if sig == signal.SIGINT else ""
        runs = 1
        while runs < 4:
            runs += 1
            if subprocess.run([sys.executable, "semisup_cam.py", *command(data, work, extra)], cwd=REPO, env=ENV,
                              capture_output=True).returncode == 0:
                break
        row["runs"] = runs
        differences = compare(state(work), reference(extra))
        row["result"] = "identical to the whole run" if not differences else "differs: " + ", ".join(differences)
        for folder in small:
            subprocess.run(["umount", str(work / folder)], capture_output=True)
        rows.append(row)
        print(f"{name}: {row['stop']}; {row['runs']} runs; {row['result']}", flush=True)

    seconds = {name: whole["seconds"] for name, whole in wholes.items()}
    (out / "kill_matrix.json").write_text(json.dumps({"whole_run_seconds": seconds, "cases": rows}, indent=2) + "\n")
    print("\n| case | how it stopped | runs to finish | result |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row.get('stop', '')} | {row.get('runs', '')} | {row['result']} |")
    for row in rows:
        if row.get("message"):
            print(f"{row['case']}: {row['message']}")


if __name__ == "__main__":
    main()
