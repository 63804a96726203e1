"""Reports of runs: what a run did, read from its directory alone, as tables and plots.

A run directory (utils/records.py) keeps every number a run measured, but as JSON written for
resuming, not for reading. This turns one run, or several to compare, into report.md with PNG
plots beside it, so results can be looked at and pasted into a thesis without a notebook:

    python -m utils.report runs/20240101-120000_cam [more runs ...] [--out DIR]
    python -m utils.report runs/semi_s0 runs/semi_s1 --reference runs/full_s0 runs/full_s1 --out DIR

With --reference (supervised runs on all the labels), the report also says how much of the gap
between each run's teacher and full supervision its students close, per run and on the means,
since that share is what the split protocol is judged by.

CamVid and CIFAR-10 runs are told apart by the keys they recorded. matplotlib is optional: it is
imported only to draw, and without it the report keeps its tables and says how to get the plots.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable, Iterable, Sequence

from utils.errors import UserError
from utils.io import atomic_open

REPORT = "report.md"
NO_PLOTS = "Plots are not drawn because matplotlib is not installed: `pip install matplotlib` gives the plots."
MISSING = "–"


@dataclass(frozen=True)
class Task:
    """How a task names its results: the score, extra test measures, pseudo-label quality measures."""

    name: str
    score: str  # summary.json holds val_<score> and test_<score>
    score_label: str
    extra_test: tuple[tuple[str, str], ...]  # (key, column title)
    pseudo: tuple[tuple[str, str], ...]


CAMVID = Task("CamVid", "miou", "mIoU", (("test_pixel_acc", "test pixel acc"),),
              (("pseudo_pixel_acc", "pseudo pixel acc"), ("pseudo_miou", "pseudo mIoU"),
               ("pseudo_ignored_frac", "pseudo ignored %")))
CIFAR = Task("CIFAR-10", "acc", "accuracy", (),
             (("pseudo_acc", "pseudo acc (kept)"), ("pseudo_all_acc", "pseudo acc (all)"),
              ("pseudo_kept_frac", "pseudo kept %")))


@dataclass
class RunRecord:
    """Everything a report needs from one run directory."""

    folder: Path
    label: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    task: Task

    @property
    def teacher(self) -> dict[str, Any]:
        return self.summary.get("teacher") or {}

    @property
    def iterations(self) -> list[dict[str, Any]]:
        return self.summary.get("iterations") or []


# ----------------------------------------------------------------------------- reading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}). Is the run still writing it? Try again, "
                        "or leave that run out of the report.") from error


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one entry per (phase, epoch): after a resume the repeated epoch's last line wins."""
    if not path.is_file():
        return []
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a full disk: the others still tell the story
        if isinstance(entry, dict) and "phase" in entry and "epoch" in entry:
            latest[(entry["phase"], entry["epoch"])] = entry
    return sorted(latest.values(), key=_phase_order(latest.values()))


def _phase_order(entries: Iterable[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple[int, int]]:
    """Phases in the order they first appear, epochs ascending within a phase."""
    first: dict[str, int] = {}
    for entry in entries:
        first.setdefault(entry["phase"], len(first))
    return lambda entry: (first[entry["phase"]], entry["epoch"])


def detect_task(summary: dict[str, Any], metrics: Sequence[dict[str, Any]], config: dict[str, Any]) -> Task:
    """CamVid records mIoU, CIFAR-10 accuracy; a run without results yet is told by its config."""
    records = [summary.get("teacher") or {}, *(summary.get("iterations") or []), *metrics]
    if any("val_miou" in r or "test_miou" in r for r in records):
        return CAMVID
    if any("val_acc" in r or "test_acc" in r for r in records):
        return CIFAR
    return CIFAR if "val_size" in config else CAMVID


def load_run(folder: Path) -> RunRecord:
    folder = Path(folder)
    paths = {name: folder / name for name in ("config.json", "summary.json", "metrics.jsonl")}
    if not any(path.is_file() for path in paths.values()):
        raise UserError(f"{folder} is not a run directory: it has none of config.json, summary.json, "
                        "metrics.jsonl. Give a folder under runs/ (or the --run_dir of a run).")
    config = _read_json(paths["config.json"]) if paths["config.json"].is_file() else {}
    summary = _read_json(paths["summary.json"]) if paths["summary.json"].is_file() else {}
    metrics = read_metrics(paths["metrics.jsonl"])
    return RunRecord(folder, folder.resolve().name, config, summary, metrics, detect_task(summary, metrics, config))


def _unique_labels(runs: list[RunRecord]) -> None:
    """Runs of the same folder name (from different places) are labelled by their whole path."""
    names = [run.label for run in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = str(run.folder)


# ----------------------------------------------------------------------------- tables

def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def iteration_table(run: RunRecord) -> str:
    """Teacher, then each iteration's student: validation, test, pseudo-label quality, promotion."""
    task = run.task
    header = ["model", "taught by", f"val {task.score_label}", f"test {task.score_label}",
              *(title for _, title in task.extra_test), *(title for _, title in task.pseudo), "promoted"]
    measures = [f"val_{task.score}", f"test_{task.score}", *(key for key, _ in task.extra_test)]
    rows = []
    if run.teacher:
        rows.append(["teacher", MISSING, *(format_value(run.teacher.get(k)) for k in measures),
                     *(MISSING for _ in task.pseudo), MISSING])
    for entry in run.iterations:
        rows.append([f"iteration {entry.get('iteration')}", format_value(entry.get("teacher")),
                     *(format_value(entry.get(k)) for k in measures),
                     *(format_value(entry.get(key)) for key, _ in task.pseudo), format_value(entry.get("promoted"))])
    return markdown_table(header, rows) if rows else "No model has been tested yet."


def final_model(run: RunRecord) -> tuple[str, dict[str, Any]]:
    """The last trained model, whether or not it was promoted: the last iteration's student, else the teacher."""
    if run.iterations:
        last = run.iterations[-1]
        return f"iteration {last.get('iteration')}", last
    return "teacher", run.teacher


def per_class_table(runs: Sequence[RunRecord]) -> str | None:
    """Test IoU per class of the final model, one column per run (and the teacher's, for a single run)."""
    if len(runs) == 1:
        name, final = final_model(runs[0])
        columns = [("teacher", runs[0].teacher), (f"{name} (final)", final)] if name != "teacher" else \
            [("teacher (final)", runs[0].teacher)]
    else:
        columns = [(run.label, final_model(run)[1]) for run in runs if run.task is CAMVID]
    classes: list[str] = []
    for _, entry in columns:
        classes += [name for name in entry.get("per_class_iou") or {} if name not in classes]
    if not classes:
        return None
    rows = [[name, *(format_value((entry.get("per_class_iou") or {}).get(name)) for _, entry in columns)]
            for name in classes]
    rows.append(["**mIoU**", *(format_value(entry.get("test_miou")) for _, entry in columns)])
    return markdown_table(["class", *(title for title, _ in columns)], rows)


def run_section(run: RunRecord) -> str:
    state = "finished" if run.summary.get("finished") else "not finished"
    lines = [f"## {run.label}", "", f"`{run.folder}`: {run.task.name}, {state}, "
             f"{len(run.iterations)} iteration(s) recorded."]
    if run.teacher.get("best_epoch") is not None:
        lines[-1] += f" The teacher's best epoch was {run.teacher['best_epoch']}."
    if run.summary.get("current_teacher"):
        current = Path(run.summary["current_teacher"]).name
        lines[-1] += f" The current teacher (the best validated model) is `{current}`."
    lines += ["", iteration_table(run), ""]
    return "\n".join(lines)


def end_model(run: RunRecord) -> tuple[str, dict[str, Any]]:
    """The model the loop ends with: the last promoted student, or the teacher if none was promoted."""
    promoted = [entry for entry in run.iterations if entry.get("promoted")]
    if promoted:
        return f"iteration {promoted[-1].get('iteration')}", promoted[-1]
    return "teacher", run.teacher


def _share(gain: float, gap: float) -> str:
    """Gain as a share of the gap, or `–` where there is no gap to close (teacher level with or above)."""
    return f"{100 * gain / gap:+.0f}%" if gap > 0 else MISSING


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


@dataclass(frozen=True)
class GapRow:
    label: str
    seed: Any
    full: float  # test score of full supervision: the reference of the same seed, else the references' mean
    teacher: float
    student: float  # the first iteration's student, the one trained by the teacher under test
    end: float  # the model the loop ends with
    end_name: str


def gap_rows(runs: Sequence[RunRecord], references: Sequence[RunRecord]) -> list[GapRow]:
    """One row per run with a tested teacher and student. The gap is counted against the full-label run
    of the same SEED where there is one; full supervision does not depend on the split, so a run
    without one is counted against the mean of the references."""
    key = f"test_{references[0].task.score}"
    full_by_seed: dict[Any, float] = {}
    for reference in references:
        if reference.teacher.get(key) is None:
            raise UserError(f"{reference.folder} has no tested model to serve as the full-supervision "
                            "reference: give supervised runs that finished (NO_ITER=0 on all the labels).")
        seed = reference.config.get("seed")
        if seed in full_by_seed:
            raise UserError(f"Two reference runs have seed {seed}: give one full-supervision run per seed.")
        full_by_seed[seed] = reference.teacher[key]
    full_mean = mean(list(full_by_seed.values()))
    rows = []
    for run in runs:
        if run.teacher.get(key) is None or not run.iterations or run.iterations[0].get(key) is None:
            continue
        end_name, end = end_model(run)
        seed = run.config.get("seed")
        rows.append(GapRow(run.label, seed, full_by_seed.get(seed, full_mean), run.teacher[key],
                           run.iterations[0][key], end[key], end_name))
    return rows


def gap_section(runs: Sequence[RunRecord], references: Sequence[RunRecord]) -> str:
    """The gap to full supervision that each run's first student, and the model its loop ends with,
    closes; then the same on the means of the runs, the figure that is robust to a seed's luck."""
    task = references[0].task
    rows = gap_rows(runs, references)
    lines = ["## The gap to full supervision", "",
             f"Test {task.score_label}. Full supervision is the reference run of the same seed or, for a seed "
             f"without one, the mean of the {_runs(len(references))} given. The student is the first "
             "iteration's; the end model is what the loop ends with (the last promoted student, or the "
             "teacher).", ""]
    kept = {row.label for row in rows}
    left_out = [run.label for run in runs if run.label not in kept]
    if left_out:
        lines += [f"Left out, as their teacher or first student is not tested yet: {', '.join(left_out)}.", ""]
    if not rows:
        return "\n".join(lines)
    header = ["run", "seed", "full labels", "teacher", "student", "gap closed", "end model", "gap closed (end)"]
    body = [[row.label, str(row.seed), format_value(row.full), format_value(row.teacher),
             format_value(row.student), _share(row.student - row.teacher, row.full - row.teacher),
             f"{format_value(row.end)} ({row.end_name})", _share(row.end - row.teacher, row.full - row.teacher)]
            for row in rows]
    full, teacher = mean([r.full for r in rows]), mean([r.teacher for r in rows])
    student, end = mean([r.student for r in rows]), mean([r.end for r in rows])
    body.append(["**mean**", MISSING, format_value(full), format_value(teacher), format_value(student),
                 _share(student - teacher, full - teacher), format_value(end), _share(end - teacher, full - teacher)])
    lines += [markdown_table(header, body), ""]
    gains = [row.student - row.teacher for row in rows]
    summary = f"On the means of {_runs(len(rows))} the students gain {student - teacher:+.2f} over their teachers; "
    summary += (f"half the gap is {(full - teacher) / 2:.2f}." if full > teacher else
                "the teachers test level with full supervision or above it, so there is no gap to close.")
    if len(gains) > 1:
        spread = stdev(gains)
        summary += (f" The gains spread by {spread:.2f} between runs (standard deviation), so their mean is "
                    f"known to about ±{spread / math.sqrt(len(gains)):.2f} (standard error).")
    return "\n".join(lines + [summary, ""])


# ----------------------------------------------------------------------------- plots

def _matplotlib() -> tuple[Any, Any] | None:
    """(Figure, FigureCanvasAgg), or None without matplotlib. No pyplot: no global state, no GUI."""
    try:
        import matplotlib  # noqa: F401  (first: an imported submodule would hide a missing package)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _figure(mpl: tuple[Any, Any], rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    figure_class, canvas_class = mpl
    figure = figure_class(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    canvas_class(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def _save(figure: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=100)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _draw_curves(run: RunRecord, val_ax: Any, loss_ax: Any) -> None:
    """Each phase after the previous one on one axis of training steps (epochs in records that lack them),
    so that phases read left to right at the length their training had."""
    phases: dict[str, list[dict[str, Any]]] = {}
    for entry in run.metrics:
        phases.setdefault(entry["phase"], []).append(entry)
    by_steps = all("step" in entry for entry in run.metrics)
    offset = 0
    for i, (phase, entries) in enumerate(phases.items()):
        where = [offset + (e["step"] if by_steps else e["epoch"]) for e in entries]
        evaluated = [(x, e["score"]) for x, e in zip(where, entries) if e.get("score") is not None]
        val_ax.plot([x for x, _ in evaluated], [score for _, score in evaluated], marker=".", color=f"C{i % 10}",
                    label=phase)
        loss_ax.plot(where, [e.get("loss") for e in entries], marker="." if len(entries) <= 60 else None,
                     linewidth=1, color=f"C{i % 10}", label=phase)
        offset = max(where)
    for ax, title in ((val_ax, f"validation {run.task.score_label} (%)"), (loss_ax, "training loss")):
        ax.set_title(f"{run.label}: {title}", fontsize=9)
        ax.set_xlabel(f"{'training steps' if by_steps else 'epochs'}, one phase after the other")
        ax.grid(alpha=0.3)
    if phases:
        val_ax.legend(fontsize=7)
        loss_ax.legend(fontsize=7)
    else:
        _empty(val_ax, "no epochs recorded yet")


def plot_curves(runs: Sequence[RunRecord], path: Path, mpl: tuple[Any, Any]) -> None:
    figure, axes = _figure(mpl, len(runs), 2, (6, 3.5))
    for run, (val_ax, loss_ax) in zip(runs, axes):
        _draw_curves(run, val_ax, loss_ax)
    _save(figure, path)


def plot_per_class(runs: Sequence[RunRecord], path: Path, mpl: tuple[Any, Any]) -> None:
    """Grouped bars: for each class, the test IoU of the teacher and of each iteration's student."""
    figure, axes = _figure(mpl, len(runs), 1, (10, 3.5))
    for run, (ax,) in zip(runs, axes):
        models = ([("teacher", run.teacher)] if run.teacher else []) + \
            [(f"iteration {e.get('iteration')}", e) for e in run.iterations]
        classes = list((models[-1][1].get("per_class_iou") or {}) if models else {})
        width = 0.8 / max(len(models), 1)
        for i, (name, entry) in enumerate(models):
            ious = entry.get("per_class_iou") or {}
            values = [ious.get(c) if ious.get(c) is not None else math.nan for c in classes]
            ax.bar([k + (i - (len(models) - 1) / 2) * width for k in range(len(classes))], values, width, label=name)
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("test IoU (%)")
        ax.set_title(f"{run.label}: per-class test IoU", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if models:
            ax.legend(fontsize=7, ncols=min(len(models), 6))
        else:
            _empty(ax, "no model tested yet")
    _save(figure, path)


def draw_plots(runs: Sequence[RunRecord], out: Path) -> list[tuple[str, str]] | None:
    """Writes the PNGs into `out`; returns (caption, file name) of each, or None without matplotlib."""
    mpl = _matplotlib()
    if mpl is None:
        return None
    plots = [("Learning curves", "curves.png", runs, plot_curves)]
    camvid = [run for run in runs if run.task is CAMVID]
    if camvid:
        plots.append(("Per-class test IoU per iteration", "per_class_iou.png", camvid, plot_per_class))
    for _, name, chosen, plot in plots:
        plot(chosen, out / name, mpl)
    return [(caption, name) for caption, name, _, _ in plots]


# ----------------------------------------------------------------------------- the report

def render(runs: Sequence[RunRecord], plots: list[tuple[str, str]] | None,
           references: Sequence[RunRecord] = ()) -> str:
    """report.md's text; `plots` are (caption, file name) in the report's folder, None without matplotlib;
    `references` are full-supervision runs to measure the gap against."""
    parts = ["# Self-training report", "", "Scores are percentages; `–` means not measured "
             "(no ground truth for the pseudo-labels, or not reached yet).", ""]
    if references:
        parts.append(gap_section(runs, references))
    parts += [run_section(run) for run in runs]
    per_class = per_class_table(runs)
    if per_class:
        parts += ["## Per-class test IoU (%)", "", "The final model of each run: the last iteration's student, "
                  "promoted or not.", "", per_class, ""]
    parts += ["## Plots", ""]
    if plots is None:
        parts += [NO_PLOTS, ""]
    else:
        parts += [f"![{caption}]({name})\n" for caption, name in plots]
    return "\n".join(parts)


def write_report(run_dirs: Sequence[Path], out: Path, reference_dirs: Sequence[Path] = ()) -> Path:
    """Reads the runs, draws the plots into `out` and writes `out/report.md`; returns its path."""
    runs = [load_run(Path(folder)) for folder in run_dirs]
    _unique_labels(runs)
    references = [load_run(Path(folder)) for folder in reference_dirs]
    if any(reference.task is not run.task for reference in references for run in runs):
        raise UserError("The reference runs and the runs are of different tasks (CamVid and CIFAR-10): "
                        "give full-supervision runs of the same task with --reference.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        plots = draw_plots(runs, out)
        path = out / REPORT
        with atomic_open(path, "w") as f:
            f.write(render(runs, plots, references))
    except OSError as error:
        raise UserError(f"Cannot write the report into {out} ({error.strerror}). Choose a writable "
                        "folder with --out DIR.") from error
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write report.md and plots for one or several run directories.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (folders under runs/)")
    parser.add_argument("--out", type=Path, help="folder for report.md and the PNGs (default: the run directory "
                                                 "when there is one; required for several)")
    parser.add_argument("--reference", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                        help="supervised runs on all the labels: adds how much of the gap to them each run closes")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.out is None and len(args.run_dirs) > 1:
            raise UserError(f"{len(args.run_dirs)} run directories given: say where their joint report goes "
                            "with --out DIR.")
        path = write_report(args.run_dirs, args.out or args.run_dirs[0], args.reference)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"Report: {path}")


if __name__ == "__main__":
    main()
