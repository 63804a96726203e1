"""report.md and PNG plots of one run or several, read from their run directories alone (utils/records.py),
whose JSON is written for resuming, not for reading; the report can be pasted into a thesis as it is:

    python -m utils.report runs/semi_s0 [runs/semi_s1 ...] [--out DIR] [--reference runs/full_s0 ...]

--reference (supervised runs on all the labels) adds the share of the gap to full supervision that the students
close, the figure the split protocol is judged by. Without matplotlib the report says how to get the plots.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import mean, stdev
from types import SimpleNamespace
from typing import Any, Sequence

from utils.errors import UserError
from utils.io import atomic_open
from utils.metrics import format_number

MISSING = "–"
# A task is known by its score: summary.json holds val_<score> and test_<score>. Runs name their data in
# summary.json; these titles stand in for those from before they did.
TASK_NAMES = {"miou": "segmentation", "acc": "classification"}
SCORE_TITLES = {"miou": "mIoU", "acc": "accuracy"}
# What the iteration table shows after the scores, {key: column title}: test measures, pseudo-label quality.
COLUMNS = {
    "miou": {"test_pixel_acc": "test pixel acc", "pseudo_pixel_acc": "pseudo pixel acc",
             "pseudo_miou": "pseudo mIoU", "pseudo_ignored_frac": "pseudo ignored %"},
    "acc": {"pseudo_acc": "pseudo acc (kept)", "pseudo_all_acc": "pseudo acc (all)",
            "pseudo_kept_frac": "pseudo kept %"},
}


# What a student that makes its own targets logs per epoch besides its loss, {key: title}.
TERMS = {"loss_labeled": "labeled loss", "loss_strong": "strong-view loss", "loss_perturbed": "perturbed-feature loss",
         "above_threshold": "unlabeled above threshold (%)"}


# What a full-supervision reference must share with the runs it measures, with the value of runs from before a
# setting existed.
PROTOCOL = {"dataset": None, "image_scale": None, "eval_scale": 0.0, "max_side": 0, "pretrained": None, "width": None}


def _read_json(path: Path) -> Any:
    """The file's JSON, or {} where the run has not written the file (yet)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path} cannot be read ({error}). Is the run still writing it? Try again, "
                        "or leave that run out of the report.") from error


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, one entry per (phase, epoch): after a resume the repeated epoch's last line wins.
    Phases come in the order they first appear, epochs ascending within a phase."""
    if not path.is_file():
        return []
    phases: dict[Any, dict[Any, dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a full disk: the others still tell the story
        if _well_formed(entry):
            phases.setdefault(entry["phase"], {})[entry["epoch"]] = entry
    return [entry for epochs in phases.values() for _, entry in sorted(epochs.items())]


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _well_formed(entry: Any) -> bool:
    """A metrics line the report can draw: a phase, an epoch, and numbers where numbers go; others are skipped
    like lines cut short."""
    return (isinstance(entry, dict) and isinstance(entry.get("phase"), str) and isinstance(entry.get("epoch"), int)
            and all(_number(entry.get(key)) for key in ("step", "loss", "score", *TERMS)))


def _check_summary(summary: Any, path: Path) -> None:
    """summary.json as the runs write it: a teacher record and a list of iteration records, numbers as numbers."""
    records = [summary.get("teacher") or {}, *(summary.get("iterations") or [])] if isinstance(summary, dict) else []
    fine = isinstance(summary, dict) and isinstance(summary.get("iterations") or [], list) and all(
        isinstance(record, dict) and all(_number(value) for key, value in record.items()
                                         if key.startswith(("val_", "test_", "pseudo_")) and key != "test_per_class")
        for record in records)
    if not fine:
        raise UserError(f"{path} is not a summary this code writes (wrong types in it): restore it, or delete it "
                        "and run the same command again to rebuild it.")


def load_run(folder: Path) -> SimpleNamespace:
    """The run in `folder`; segmentation records mIoU, classification accuracy, a run without results yet tells by
    its config."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("config.json", "summary.json", "metrics.jsonl")):
        raise UserError(f"{folder} is not a run directory: it has none of config.json, summary.json, "
                        "metrics.jsonl. Give a folder under runs/ (or the --run_dir of a run).")
    config = _read_json(folder / "config.json")
    summary = _read_json(folder / "summary.json")
    if not isinstance(config, dict):
        raise UserError(f"{folder / 'config.json'} is not a config this code writes: restore it.")
    _check_summary(summary, folder / "summary.json")
    teacher = summary.get("teacher") or {}
    iterations = summary.get("iterations") or []
    metrics = read_metrics(folder / "metrics.jsonl")
    records = [teacher, *iterations, *metrics]
    recorded = [score for score in TASK_NAMES if any(f"val_{score}" in r or f"test_{score}" in r for r in records)]
    score = recorded[0] if recorded else ("acc" if "val_size" in config else "miou")
    return SimpleNamespace(folder=folder, label=folder.resolve().name, config=config, summary=summary,
                           teacher=teacher, iterations=iterations, metrics=metrics, score=score)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def models(run: SimpleNamespace) -> list[tuple[str, dict[str, Any]]]:
    """The teacher once tested, then each iteration's student, by the names the report gives them."""
    teacher = [("teacher", run.teacher)] if run.teacher else []
    return teacher + [(f"iteration {entry.get('iteration')}", entry) for entry in run.iterations]


def run_section(run: SimpleNamespace) -> str:
    """What the run is and how far it got, then its models: validation, test, pseudo-label quality, promotion.
    The teacher has no key of its own for `taught by`, pseudo-labels or promotion, so those cells read `–`."""
    state = "finished" if run.summary.get("finished") else "not finished"
    data = run.summary.get("data") or TASK_NAMES[run.score]  # runs from before the record named their data
    text = f"`{run.folder}`: {data}, {state}, {len(run.iterations)} iteration(s) recorded."
    if run.teacher.get("best_epoch") is not None:
        text += f" The teacher's best epoch was {run.teacher['best_epoch']}."
    if run.summary.get("current_teacher"):
        text += f" The current teacher (the best validated model) is `{Path(run.summary['current_teacher']).name}`."
    title, columns = SCORE_TITLES[run.score], COLUMNS[run.score]
    header = ["model", "taught by", f"val {title}", f"test {title}", *columns.values(), "promoted"]
    keys = ["teacher", f"val_{run.score}", f"test_{run.score}", *columns, "promoted"]
    rows = [[name, *(format_number(entry.get(key), MISSING) for key in keys)] for name, entry in models(run)]
    table = markdown_table(header, rows) if rows else "No model has been tested yet."
    return "\n".join([f"## {run.label}", "", text, "", table, ""])


def per_class_section(runs: Sequence[SimpleNamespace]) -> str:
    """Test IoU per class of the final model (the last student, promoted or not, else the teacher), one column
    per segmentation run; for a single run, the teacher's beside it. Empty where no run has a per-class IoU."""
    if len(runs) > 1:
        columns = [(run.label, (run.iterations or [run.teacher])[-1]) for run in runs if run.score == "miou"]
    elif runs[0].iterations:
        last = runs[0].iterations[-1]
        columns = [("teacher", runs[0].teacher), (f"iteration {last.get('iteration')} (final)", last)]
    else:
        columns = [("teacher (final)", runs[0].teacher)]
    ious = [entry.get("per_class_iou") or {} for _, entry in columns]
    classes = list(dict.fromkeys(name for column in ious for name in column))
    if not classes:
        return ""
    rows = [[name, *(format_number(column.get(name), MISSING) for column in ious)] for name in classes]
    rows.append(["**mIoU**", *(format_number(entry.get("test_miou"), MISSING) for _, entry in columns)])
    table = markdown_table(["class", *(title for title, _ in columns)], rows)
    return "\n".join(["## Per-class test IoU (%)", "", "The final model of each run: the last iteration's student, "
                      "promoted or not.", "", table, ""])


def gap_row(name: str, seed: str, full: float, teacher: float, student: float, end: float,
            end_name: str = "") -> list[str]:
    """A row of the gap table; a gain's share of the gap is `–` where there is no gap (teacher level or above)."""
    gap = full - teacher
    shares = [f"{100 * (score - teacher) / gap:+.0f}%" if gap > 0 else MISSING for score in (student, end)]
    return [name, seed, *(format_number(score, MISSING) for score in (full, teacher, student)), shares[0],
            format_number(end, MISSING) + end_name, shares[1]]


def gap_section(runs: Sequence[SimpleNamespace], references: Sequence[SimpleNamespace]) -> str:
    """The gap to full supervision that each run's first student, and its loop's end model, closes; then the same on
    the means of the runs, robust to a seed's luck. Full supervision is the reference of the same SEED, else (as it
    does not depend on the split) the mean of the references."""
    key = f"test_{references[0].score}"
    full_by_seed: dict[Any, float] = {}
    for reference in references:
        if reference.teacher.get(key) is None:
            raise UserError(f"{reference.folder} has no tested model to serve as the full-supervision "
                            "reference: give supervised runs that finished (NO_ITER=0 on all the labels).")
        seed = reference.config.get("seed")
        if seed in full_by_seed:
            raise UserError(f"Two reference runs have seed {seed}: give one full-supervision run per seed.")
        full_by_seed[seed] = reference.teacher[key]
    full_mean = mean(full_by_seed.values())
    lines = ["## The gap to full supervision", "",
             f"Test {SCORE_TITLES[references[0].score]}. Full supervision is the reference run of the same seed "
             "or, for a seed without one, the mean of the references. The student is the first iteration's; "
             "the end model is what the loop ends with (the last promoted student, or the teacher).", ""]
    scores, body, left_out = [], [], []
    for run in runs:
        if run.teacher.get(key) is None or not run.iterations or run.iterations[0].get(key) is None:
            left_out.append(run.label)
            continue
        promoted = [entry for entry in run.iterations if entry.get("promoted")]
        end_name = f"iteration {promoted[-1].get('iteration')}" if promoted else "teacher"
        seed = run.config.get("seed")
        scores.append((full_by_seed.get(seed, full_mean), run.teacher[key], run.iterations[0][key],
                       (promoted or [run.teacher])[-1][key]))
        body.append(gap_row(run.label, str(seed), *scores[-1], f" ({end_name})"))
    if left_out:
        lines += [f"Left out, as their teacher or first student is not tested yet: {', '.join(left_out)}.", ""]
    if not scores:
        return "\n".join(lines)
    gains = [student - teacher for _, teacher, student, _ in scores]
    full, teacher, student, end = (mean(column) for column in zip(*scores))
    body.append(gap_row("**mean**", MISSING, full, teacher, student, end))
    header = ["run", "seed", "full labels", "teacher", "student", "gap closed", "end model", "gap closed (end)"]
    lines += [markdown_table(header, body), ""]
    summary = f"On the means of {len(scores)} run(s) the students gain {student - teacher:+.2f} over their teachers; "
    summary += (f"half the gap is {(full - teacher) / 2:.2f}." if full > teacher else
                "the teachers test level with full supervision or above it, so there is no gap to close.")
    if len(gains) > 1:
        summary += (f" The gains spread by {stdev(gains):.2f} between runs (standard deviation), so their mean is "
                    f"known to about ±{stdev(gains) / math.sqrt(len(gains)):.2f} (standard error).")
    return "\n".join(lines + [summary, ""])


def terms_section(run: SimpleNamespace) -> str:
    """Per epoch of each online phase: its loss terms and the share of unlabeled pixels (images) above the
    threshold, the figures that show whether the student learns from its own targets. Empty without such phases."""
    phases: dict[str, list[dict[str, Any]]] = {}
    for entry in run.metrics:
        if "above_threshold" in entry:
            phases.setdefault(entry["phase"], []).append(entry)
    parts = []
    for phase, entries in phases.items():
        keys = ["loss", *(key for key in TERMS if key in entries[0]), "score"]
        titles = ["loss", *(TERMS[key] for key in keys[1:-1]), f"val {SCORE_TITLES[run.score]}"]
        rows = [[str(e["epoch"]), *(format_number(e.get(key), MISSING) for key in keys)] for e in entries]
        parts += [f"### {run.label}, {phase}", "", markdown_table(["epoch", *titles], rows), ""]
    return "\n".join(["## Online students: loss terms per epoch", "", *parts]) if parts else ""


def draw_curves(run: SimpleNamespace, val_ax: Any, loss_ax: Any) -> None:
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
        for style, key in zip(("--", ":", "-."), (k for k in TERMS if k != "above_threshold" and k in entries[0])):
            loss_ax.plot(where, [e.get(key) for e in entries], style, linewidth=1, color=f"C{i % 10}",
                         label=f"{phase}: {TERMS[key]}")
        offset = max(where)
    for ax, title in ((val_ax, f"validation {SCORE_TITLES[run.score]} (%)"), (loss_ax, "training loss")):
        ax.set_title(f"{run.label}: {title}", fontsize=9)
        ax.set_xlabel(f"{'training steps' if by_steps else 'epochs'}, one phase after the other")
        ax.grid(alpha=0.3)
        if phases:
            ax.legend(fontsize=7)
    if not phases:
        val_ax.text(0.5, 0.5, "no epochs recorded yet", ha="center", va="center", transform=val_ax.transAxes,
                    color="grey")


def draw_per_class(run: SimpleNamespace, ax: Any) -> None:
    """Grouped bars: for each class, the test IoU of the teacher and of each iteration's student."""
    tested = models(run)
    classes = list(tested[-1][1].get("per_class_iou") or {}) if tested else []
    width = 0.8 / max(len(tested), 1)
    for i, (name, entry) in enumerate(tested):
        ious = entry.get("per_class_iou") or {}
        values = [math.nan if ious.get(c) is None else ious[c] for c in classes]
        ax.bar([k + (i - (len(tested) - 1) / 2) * width for k in range(len(classes))], values, width, label=name)
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("test IoU (%)")
    ax.set_title(f"{run.label}: per-class test IoU", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if tested:
        ax.legend(fontsize=7, ncols=min(len(tested), 6))
    else:
        ax.text(0.5, 0.5, "no model tested yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def plots_section(runs: Sequence[SimpleNamespace], out: Path) -> str:
    """Draws the PNGs into `out` (with Figure, not pyplot: no global state, no GUI) and returns the section."""
    try:
        import matplotlib  # noqa: F401  (first: an imported submodule would hide a missing package)
        from matplotlib.figure import Figure
    except ImportError:
        return "## Plots\n\nPlots are not drawn because matplotlib is not installed: `pip install matplotlib` " \
               "gives the plots.\n"
    curves = Figure(figsize=(12, 3.5 * len(runs)), layout="constrained")
    for run, (val_ax, loss_ax) in zip(runs, curves.subplots(len(runs), 2, squeeze=False)):
        draw_curves(run, val_ax, loss_ax)
    plots = [("Learning curves", "curves.png", curves)]
    segmentation = [run for run in runs if run.score == "miou"]
    if segmentation:
        per_class = Figure(figsize=(10, 3.5 * len(segmentation)), layout="constrained")
        for run, (ax,) in zip(segmentation, per_class.subplots(len(segmentation), 1, squeeze=False)):
            draw_per_class(run, ax)
        plots.append(("Per-class test IoU per iteration", "per_class_iou.png", per_class))
    for _, name, figure in plots:
        with atomic_open(out / name, "wb") as f:
            figure.savefig(f, format="png", dpi=100)
    return "## Plots\n\n" + "\n".join(f"![{caption}]({name})\n" for caption, name, _ in plots)


def write_report(run_dirs: Sequence[Path], out: Path, reference_dirs: Sequence[Path] = ()) -> Path:
    """Writes `out/report.md` and its plots; `reference_dirs` are full-supervision runs to measure the gap against."""
    runs = [load_run(folder) for folder in run_dirs]
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1:  # the same folder name from different places
            run.label = str(run.folder)
    references = [load_run(folder) for folder in reference_dirs]
    if any(reference.score != run.score for reference in references for run in runs):
        raise UserError("The reference runs and the runs are of different tasks (segmentation and classification): "
                        "give full-supervision runs of the same task with --reference.")
    for reference in references:  # full supervision of the same data at the same resolution, else no gap
        for run in runs:
            differ = [key for key, default in PROTOCOL.items()  # a setting a run does not name may be anything
                      if None not in (reference.config.get(key, default), run.config.get(key, default))
                      and reference.config.get(key, default) != run.config.get(key, default)]
            if differ:
                pairs = ", ".join(f"{k} ({reference.config.get(k, PROTOCOL[k])!r} and "
                                  f"{run.config.get(k, PROTOCOL[k])!r})" for k in differ)
                raise UserError(f"The reference {reference.folder} and the run {run.folder} differ in {pairs}: give "
                                "full-supervision runs of the same data and protocol with --reference.")
    sections = ["# Self-training report\n\nScores are percentages; `–` means not measured (no ground truth for "
                "the pseudo-labels, or not reached yet).\n"]
    if references:
        sections.append(gap_section(runs, references))
    sections += [run_section(run) for run in runs]
    sections.append(per_class_section(runs))
    sections += [terms_section(run) for run in runs]
    try:
        out.mkdir(parents=True, exist_ok=True)
        sections.append(plots_section(runs, out))
        path = out / "report.md"
        with atomic_open(path, "w") as f:
            f.write("\n".join(section for section in sections if section))
    except OSError as error:
        raise UserError(f"Cannot write the report into {out} ({error.strerror}). Choose a writable "
                        "folder with --out DIR.") from error
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write report.md and plots for one or several run directories.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (folders under runs/)")
    parser.add_argument("--out", type=Path, help="folder for report.md and the PNGs (default: the one run directory)")
    parser.add_argument("--reference", nargs="+", type=Path, default=[], metavar="RUN_DIR",
                        help="supervised runs on all the labels: adds how much of the gap to them each run closes")
    args = parser.parse_args(argv)
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
