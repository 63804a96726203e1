"""The run directory: what a run was asked to do, what it measured, and how far it got.

    runs/<date-time>_<name>/
        config.json      every constant of the run; the same config resumes the run
        metrics.jsonl    one line per evaluation (phase, iteration, epoch, loss, lr, score, ...)
        summary.json     teacher and per-iteration results (percent values), timings in seconds
        progress.json    finished phases and their results, so a re-run skips them
        last_<phase>.pth.tar   resume state of each phase

Re-running the same command finds the unfinished run whose config.json matches and carries on.
"""
from __future__ import annotations

import datetime
import json
import math
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tqdm import tqdm

from utils.config import Config, configure, constants_of
from utils.dist import Runtime, setup
from utils.errors import UserError
from utils.io import append_jsonl, probe_folder, write_json

# Settings that may change between a run and its resumption without changing the experiment.
# PSEUDO_ROOT is only where pseudo-labels are cached (they are remade there), so a run that could
# not write them can resume with another --pseudo_root. NO_ITER only says how far to go: each
# iteration depends on the earlier ones alone, so raising it continues a finished run.
NOT_PART_OF_EXPERIMENT = ("run_dir", "resume", "pseudo_root", "no_iter")


def code_version() -> str:
    """The git commit of the code, '-dirty' when it has uncommitted changes, or 'unknown' outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=root,
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_PART_OF_EXPERIMENT}


def differing_settings(saved: Mapping[str, Any], config: Mapping[str, Any],
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
    """The experiment settings in which a saved run and this config differ.

    A setting the saved run does not name was added to the code after it started; a new constant
    defaults to the behaviour before it, so the run resumes if the setting still has its default.
    """
    saved, config, defaults = experiment(saved), experiment(config), defaults or {}
    return sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k)
                  and not (k not in saved and k in defaults and config.get(k) == defaults[k]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}). Delete the run directory or pass --resume=False.") from error


def find_unfinished(base: Path, name: str, config: Mapping[str, Any],
                    defaults: Mapping[str, Any] | None = None) -> Path | None:
    """The newest run under `base` with this experiment's config that has not done what this config asks."""
    for folder in sorted(base.glob(f"*_{name}"), reverse=True):
        config_path, summary_path = folder / "config.json", folder / "summary.json"
        if not config_path.is_file():
            continue
        try:
            same = not differing_settings(json.loads(config_path.read_text()), config, defaults)
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            continue
        if same and not reached(summary, config):
            return folder
    return None


def reached(summary: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether a run has finished with at least the iterations this config asks for."""
    return bool(summary.get("finished")) and len(summary.get("iterations", [])) >= config.get("no_iter", 0)


def choose_run_dir(config: Mapping[str, Any], name: str, base: str = "runs",
                   defaults: Mapping[str, Any] | None = None) -> Path:
    """RUN_DIR if given; else the unfinished run of the same config (when RESUME); else a new folder."""
    if config["run_dir"]:
        return Path(config["run_dir"])
    if config["resume"]:
        found = find_unfinished(Path(base), name, config, defaults)
        if found is not None:
            return found
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(base) / f"{stamp}_{name}"


class Run:
    """One run directory. Only the main process writes; the others read."""

    def __init__(self, folder: Path, config: Mapping[str, Any], writer: bool = True,
                 defaults: Mapping[str, Any] | None = None):
        self.folder = folder
        self.writer = writer
        self.config = dict(config)
        if (folder / "config.json").is_file():
            self._check_same_config(defaults)
        if writer:
            self._prepare_folder()
        self.progress: dict[str, Any] = _read_json(self.progress_path) if self.progress_path.is_file() else {}
        earlier: dict[str, Any] = _read_json(self.summary_path) if self.summary_path.is_file() else {}
        self.summary: dict[str, Any] = (earlier if self.progress
                                        else {"teacher": {}, "iterations": [], "finished": False})
        self.summary["finished"] = False  # until this process finishes it: a larger NO_ITER adds iterations
        # Time is spent even when no phase finished: what a killed process spent stays on record.
        self.summary["timings_s"] = dict(earlier.get("timings_s", {}))
        self._clock: tuple[str, float, float] | None = None
        # Marks the best checkpoints this run writes into SAVE_DIR, which other runs may share; kept for
        # the run's life, also while no phase has finished, so a resumed run recognises its own files.
        self.id: str = earlier.get("run_id") or uuid.uuid4().hex[:12]
        new_id = earlier.get("run_id") != self.id
        self.summary["run_id"] = self.id
        # Every code that worked on this run, also on a phase that had not finished when the run stopped.
        versions = self.summary.setdefault("code_versions", list(earlier.get("code_versions", [])))
        new_version = writer and (version := code_version()) not in versions
        if new_version:
            versions.append(version)
        if writer and (new_version or new_id):
            self.save_summary()  # now, so the version and the id are on record even if no phase finishes

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.json"

    @property
    def summary_path(self) -> Path:
        return self.folder / "summary.json"

    def _check_same_config(self, defaults: Mapping[str, Any] | None) -> None:
        if not self.config["resume"]:
            return  # starting over: the old config.json is replaced, even an unreadable one
        saved = _read_json(self.folder / "config.json")
        differing = differing_settings(saved, self.config, defaults)
        if differing:
            details = ", ".join(f"{k}: {saved.get(k)!r} there, {self.config.get(k)!r} now" for k in differing[:6])
            raise UserError(f"{self.folder} holds a run with another config ({details}). Use another --run_dir, "
                            "or --resume=False to start that run over.")

    def _prepare_folder(self) -> None:
        save_dir = self.config.get("save_dir")
        if save_dir:
            # Checked before config.json is written, so the fixed command can still resume this run.
            try:
                probe_folder(Path(save_dir))
            except OSError as error:
                raise UserError(f"Cannot write checkpoints to SAVE_DIR={save_dir} ({error.strerror or error}). "
                                "Choose a writable place with --save_dir=PATH.") from error
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A run killed while saving leaves its temporary file (.last_<phase>.pth.tar.*.tmp, the size of a
            # checkpoint); the run directory is this run's alone, so nothing else can be writing them.
            for stale in self.folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            if not self.config["resume"]:
                for stale in ("progress.json", "summary.json", "metrics.jsonl"):
                    (self.folder / stale).unlink(missing_ok=True)
                for stale in self.folder.glob("last_*.pth.tar"):
                    stale.unlink()
            write_json(self.folder / "config.json", self.config)
        except OSError as error:
            raise UserError(f"Cannot write the run directory {self.folder} ({error.strerror}). "
                            "Choose a writable place with --run_dir=PATH.") from error

    def done(self, phase: str) -> dict[str, Any] | None:
        return self.progress.get(phase)

    def mark_done(self, phase: str, result: Mapping[str, Any]) -> None:
        self.progress[phase] = dict(result)
        if self.writer:
            write_json(self.progress_path, self.progress)

    def log(self, **entry: Any) -> None:
        if self.writer:
            append_jsonl(self.folder / "metrics.jsonl", entry)
        if self._clock is not None:
            self._record_time()
            self.save_summary()

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Adds the wall time of the block to `timings_s[key]`.

        The figure on disk is brought up to date at every `log` line as well, so a run killed in the
        block and resumed counts the time spent before the kill (up to its last logged epoch): the
        timings are what the run cost, over every process that worked on it.
        """
        self._clock = (key, self.summary["timings_s"].get(key, 0.0), time.perf_counter())
        try:
            yield
        finally:
            self._record_time()
            self._clock = None
            self.save_summary()

    def _record_time(self) -> None:
        key, before, began = self._clock
        self.summary["timings_s"][key] = round(before + time.perf_counter() - began, 2)

    def save_summary(self) -> None:
        if self.writer:
            write_json(self.summary_path, self.summary)

    def check_own(self, checkpoint: Mapping[str, Any], path: Path) -> None:
        """Refuses a best checkpoint of this run that another run has since overwritten in the shared SAVE_DIR.

        Checkpoints written before runs had ids carry none and are taken as they are.
        """
        written_by = checkpoint.get("run_id")
        if written_by is not None and written_by != self.id:
            raise UserError(f"{path} was written by another run (run id {written_by}; this run, {self.folder}, is "
                            f"{self.id}): a run with the same SAVE_DIR has replaced this run's model. Give runs "
                            "that overlap their own --save_dir; to train this run's models again, re-run with "
                            "--resume=False.")

    def last_checkpoint(self, phase: str) -> Path:
        return self.folder / f"last_{phase}.pth.tar"

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
    rt = setup(cfg.device)
    if cfg.demo and rt.is_main:
        make_demo_data(cfg.data_root)
    # Rank 0 picks and prepares the folder; the other processes follow once it is ready.
    defaults = constants_of(namespace)
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
        values = "".join(f"{_fmt(e.get(k)):>20}" for k in extra)
        lines.append(f"{name:<12} {_fmt(e.get('val_' + score)):>9} {_fmt(e.get('test_' + score)):>9} "
                     f"{values}{promoted:>10}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
