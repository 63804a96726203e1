"""The run directory: what a run was asked to do, what it measured, and how far it got.

    runs/<date-time>_<name>/
        config.json      every constant of the run; the same config resumes the run
        metrics.jsonl    one line per evaluation (phase, iteration, epoch, loss, lr, score, ...)
        summary.json     teacher and per-iteration results (percent values), timings in seconds
        progress.json    finished phases and their results, so a re-run skips them
        last_<phase>.pth.tar   resume state of each phase; a finished phase's final weights

Re-running the same command finds the unfinished run whose config.json matches and carries on.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tqdm import tqdm

from utils.checkpoint import load_checkpoint
from utils.config import Config, configure, constants_of
from utils.dist import Runtime, setup
from utils.errors import UserError
from utils.io import append_jsonl, lock_folder, read_json, remove_temporary_files, write_json, write_text
from utils.metrics import format_number

# Settings that may change between a run and its resumption without changing the experiment. PSEUDO_ROOT is only
# where pseudo-labels are cached (they are remade there), so a run that could not write them can resume with another
# --pseudo_root. NO_ITER only says how far to go: each iteration depends on the earlier ones alone, so raising it
# continues a finished run. DATA_CACHE only says where decoded images are kept.
NOT_PART_OF_EXPERIMENT = ("run_dir", "resume", "pseudo_root", "no_iter", "data_cache")


def code_version() -> str:
    """The git commit of the code, '-dirty' when it has uncommitted changes, or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def differing_settings(saved: Mapping[str, Any], config: Mapping[str, Any],
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """The experiment settings in which a saved run and this config differ. A setting the saved run does not
    name was added to the code since, defaulting to the old behaviour: it counts only if it left its default."""
    defaults = defaults or {}
    names = (set(saved) | set(config)) - set(NOT_PART_OF_EXPERIMENT)
    return sorted(k for k in names if saved.get(k) != config.get(k)
                  and not (k not in saved and k in defaults and config.get(k) == defaults[k]))


def _checkpoints(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(phase, checkpoint) of every readable last_<phase>.pth.tar of a run directory."""
    for path in sorted(folder.glob("last_*.pth.tar")):
        try:
            yield path.name[len("last_"):-len(".pth.tar")], load_checkpoint(path)
        except UserError:
            continue  # damaged: the phase is trained again when it is reached


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The config a run directory was started with: config.json, or if that was damaged the config its
    checkpoints keep; None when neither tells (then nothing was trained there)."""
    config = read_json(folder / "config.json")
    if isinstance(config, dict):
        return config
    return next((checkpoint["config"] for _, checkpoint in _checkpoints(folder) if "config" in checkpoint), None)


def choose_run_dir(config: Mapping[str, Any], name: str, base: str = "runs",
                   defaults: Mapping[str, Any] | None = None) -> Path:
    """RUN_DIR if given; else with RESUME the newest run under `base` of this experiment that has not done the
    iterations this config asks for (an unreadable summary.json counts as not done: resuming rebuilds it);
    else a new folder."""
    if config["run_dir"]:
        return Path(config["run_dir"])
    for folder in sorted(Path(base).glob(f"*_{name}"), reverse=True) if config["resume"] else []:
        saved = saved_config(folder)
        if saved is None or differing_settings(saved, config, defaults):
            continue
        summary = read_json(folder / "summary.json")
        if not (isinstance(summary, dict) and summary.get("finished")
                and len(summary.get("iterations", [])) >= config.get("no_iter", 0)):
            return folder
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{stamp}_{name}"


class Run:
    """One run directory. Only the main process writes, and holds the run's folders (RUN_DIR, SAVE_DIR, and those
    the script adds with `hold`) so that no other process writes there at the same time. Lost state is rebuilt:
    progress.json from the finished phases' checkpoints, summary.json by testing the finished models again, a
    damaged config.json from the config the checkpoints keep."""

    def __init__(self, folder: Path, config: Mapping[str, Any], writer: bool = True,
                 defaults: Mapping[str, Any] | None = None):
        self.folder = folder
        self.writer = writer
        self.config = dict(config)
        self.carried: dict[str, Any] = {}  # what every checkpoint of the run keeps beside the config (its classes)
        self.progress_path = folder / "progress.json"
        self.summary_path = folder / "summary.json"
        self.position = "before the first epoch"  # where a Ctrl-C stops the run
        self._clock: tuple[str, float, float] | None = None  # set by `timed`
        if writer:
            self.hold(folder, "RUN_DIR", "this run is going on there already: wait for it, or give another --run_dir")
        saved = saved_config(folder) if config["resume"] else None
        if saved is not None and (differing := differing_settings(saved, self.config, defaults)):
            details = ", ".join(f"{k}: {saved.get(k)!r} there, {self.config.get(k)!r} now" for k in differing[:6])
            raise UserError(f"{folder} holds a run with another config ({details}). Use another --run_dir, "
                            "or --resume=False to start that run over.")
        if writer:
            save_dir = self.config.get("save_dir")
            if save_dir:
                # Checked before config.json is written, so the fixed command can still resume this run. A save
                # killed half-way leaves its temporary file, the size of a checkpoint; only this run writes here.
                self.hold(Path(save_dir), "SAVE_DIR", "runs that overlap need their own --save_dir, or wait for that "
                                                      "run to finish")
                remove_temporary_files(Path(save_dir))
            try:
                remove_temporary_files(folder)
                if not config["resume"]:
                    for stale in ("progress.json", "summary.json", "metrics.jsonl"):
                        (folder / stale).unlink(missing_ok=True)
                    for stale in folder.glob("last_*.pth.tar"):
                        stale.unlink()
                write_json(folder / "config.json", self.config)
            except OSError as error:
                raise UserError(f"Cannot write the run directory {folder} ({error.strerror}). "
                                "Choose a writable place with --run_dir=PATH.") from error
        progress = read_json(self.progress_path)
        checkpoints = {}
        if not (isinstance(progress, dict) and isinstance(progress.get("phases"), dict)):
            checkpoints = dict(_checkpoints(folder))
            progress = {"phases": {phase: c["result"] for phase, c in checkpoints.items() if "result" in c}}
            if progress["phases"]:
                self.note(f"{self.progress_path} was missing or damaged: rebuilt from the finished phases' "
                          f"checkpoints ({', '.join(progress['phases'])})")
        self.progress: dict[str, Any] = progress["phases"]
        earlier = read_json(self.summary_path)
        if not isinstance(earlier, dict):
            if self.progress:
                self.note(f"{self.summary_path} was missing or damaged: the finished models are tested again to "
                          "rebuild it")
            earlier = {}
        self.summary = earlier if self.progress and "teacher" in earlier else {"teacher": {}, "iterations": []}
        self.summary["finished"] = False  # until this process finishes it: a larger NO_ITER adds iterations
        # Time is spent even when no phase finished: what a killed process spent stays on record.
        self.summary["timings_s"] = dict(earlier.get("timings_s", {}))
        # Marks the best checkpoints this run writes into SAVE_DIR, so a resumed run recognises its own files.
        self.id: str = (earlier.get("run_id") or progress.get("run_id")
                        or next((c["run_id"] for c in checkpoints.values() if "run_id" in c), None)
                        or uuid.uuid4().hex[:12])
        self.summary["run_id"] = self.id
        # Every code that worked on this run, also on a phase that had not finished when the run stopped.
        versions = self.summary.setdefault("code_versions", list(earlier.get("code_versions", [])))
        if writer and (version := code_version()) not in versions:
            versions.append(version)
        if writer:
            self.save_summary()  # now, so the version and the id are on record even if no phase finishes
            if checkpoints:
                self._save_progress()

    def note(self, text: str) -> None:
        if self.writer:
            tqdm.write(f"note: {text}")

    def hold(self, folder: Path, constant: str, advice: str) -> None:
        """Holds `folder` for this process: another process that asks for it is refused, naming this run."""
        holder = f"the run {self.folder} (process {os.getpid()} on {socket.gethostname()}, since " \
                 f"{datetime.datetime.now().isoformat(timespec='seconds')})"
        try:
            other = lock_folder(Path(folder), holder)
        except OSError as error:
            raise UserError(f"Cannot write into {constant}={folder} ({error.strerror or error}). Choose a writable "
                            f"place with --{constant.lower()}=PATH.") from error
        if other is not None:
            raise UserError(f"{constant}={folder} is in use by {other}: {advice}.")

    def _write(self, write: Callable[[Path, Any], None], path: Path, content: Any) -> None:
        try:
            write(path, content)
        except OSError as error:
            raise UserError(f"Cannot write {path} ({error.strerror or error}). Free some disk space and run the "
                            "same command again: it resumes where the run stopped.") from error

    def mark_done(self, phase: str, result: Mapping[str, Any] | None) -> None:
        """Records a phase as finished with its `result`, or with None as to be trained again."""
        if result is None:
            self.progress.pop(phase, None)
        else:
            self.progress[phase] = dict(result)
        if self.writer:
            self._save_progress()

    def _save_progress(self) -> None:
        self._write(write_json, self.progress_path, {"run_id": self.id, "phases": self.progress})

    def log(self, **entry: Any) -> None:
        self.position = f"{entry['phase']}, after epoch {entry['epoch']}"
        if self.writer:
            self._write(append_jsonl, self.folder / "metrics.jsonl", entry)
        if self._clock is not None:
            self.save_summary()

    def forget_epochs_after(self, phase: str, epoch: int) -> None:
        """Drops the metrics lines of `phase` after `epoch`: a resumed phase trains those epochs again."""
        path = self.folder / "metrics.jsonl"
        if not self.writer or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill or a full disk
            if entry.get("phase") != phase or entry.get("epoch", 0) <= epoch:
                kept.append(line)
        if len(kept) < len(lines):
            self._write(write_text, path, "".join(kept))

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Adds the wall time of the block to `timings_s[key]`, and turns Ctrl-C in it into one line.
        Every `log` line updates the figure on disk too, so a killed and resumed run counts what it spent."""
        self._clock = (key, self.summary["timings_s"].get(key, 0.0), time.perf_counter())
        try:
            yield
        except KeyboardInterrupt:
            raise UserError(f"Stopped by Ctrl-C in {key} ({self.position}). The same command resumes the run "
                            f"{self.folder} from its last checkpoint.") from None
        finally:
            self.save_summary()
            self._clock = None

    def save_summary(self) -> None:
        if self._clock is not None:  # the time of the block running now, so far
            key, before, began = self._clock
            self.summary["timings_s"][key] = round(before + time.perf_counter() - began, 2)
        if self.writer:
            self._write(write_json, self.summary_path, self.summary)

    def check_own(self, checkpoint: Mapping[str, Any], path: Path) -> None:
        """Refuses a best checkpoint of this run that another run has since overwritten in the shared SAVE_DIR
        (checkpoints written before runs had ids carry none and are taken as they are)."""
        written_by = checkpoint.get("run_id")
        if written_by is not None and written_by != self.id:
            raise UserError(f"{path} was written by another run (run id {written_by}; this run, {self.folder}, is "
                            f"{self.id}): a run with the same SAVE_DIR has replaced this run's model. Give runs "
                            "that overlap their own --save_dir; to train this run's models again, re-run with "
                            "--resume=False.")

    def finish(self, is_main: bool) -> None:
        self.summary["finished"] = True
        self.save_summary()
        if is_main:
            tqdm.write(f"Run record: {self.folder}")


def start_run(namespace: Mapping[str, Any], argv: Sequence[str], demo_overrides: Mapping[str, Any], name: str,
              check: Callable[[Config], None], make_demo_data: Callable[[str], Any]) -> tuple[Config, Runtime, Run]:
    """The config from a script's constants and the command line, checked by `check` before anything is
    written; the device and the processes; the demo's data under `--demo`; and the run directory."""
    cfg = configure(namespace, argv, demo_overrides)
    check(cfg)
    rt = setup(cfg.device, cfg.precision)
    cfg["precision"] = rt.precision  # what "auto" chose here: a run resumed elsewhere must compute the same
    if cfg.demo and rt.is_main:
        make_demo_data(cfg.data_root)
    # Rank 0 picks and prepares the folder; the other processes follow once it is ready. A run from before
    # PRECISION existed computed in bf16 on CUDA and in fp32 on the CPU.
    defaults = {**constants_of(namespace), "precision": "bf16" if rt.device.type == "cuda" else "fp32"}
    folder = rt.broadcast(choose_run_dir(cfg, name, defaults=defaults) if rt.is_main else None)
    run = Run(folder, cfg, writer=True, defaults=defaults) if rt.is_main else None
    rt.barrier()
    return cfg, rt, run if rt.is_main else Run(folder, cfg, writer=False, defaults=defaults)


def iteration_table(summary: Mapping[str, Any], score: str) -> str:
    """The teacher and every student: val and test `score`, pseudo-label quality, promotion."""
    rows = [("teacher", summary["teacher"], "")]
    rows += [(f"iteration {e['iteration']}", e, "yes" if e["promoted"] else "no") for e in summary["iterations"]]
    extra = [k for k in ("pseudo_acc", "pseudo_pixel_acc", "pseudo_miou", "pseudo_ignored_frac")
             if any(k in e for _, e, _ in rows)]
    header = f"{'model':<12} {'val ' + score:>9} {'test ' + score:>9} " + "".join(f"{k:>20}" for k in extra)
    lines = [header + f"{'promoted':>10}"]
    for name, e, promoted in rows:
        val, test = format_number(e.get("val_" + score)), format_number(e.get("test_" + score))
        values = "".join(f"{format_number(e.get(k)):>20}" for k in extra)
        lines.append(f"{name:<12} {val:>9} {test:>9} {values}{promoted:>10}")
    return "\n".join(lines)
