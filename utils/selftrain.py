"""The teacher → pseudo-labels → student loop, the same for CamVid and CIFAR-10.

A task (segmentation or classification) subclasses `SelfTraining` and supplies its data, model,
phases, validation and pseudo-labeling; this class owns the order of things, the checkpoints,
the promotion rule and the records, so both experiments behave alike and resume alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from utils.checkpoint import load_checkpoint, load_weights
from utils.config import Config, configure, constants_of
from utils.dist import Runtime, seed_everything, setup, teardown
from utils.engine import Best, DistributionAlignment, MeanTeacher, Phase, fit
from utils.errors import UserError
from utils.records import Run, choose_run_dir


# String constants of the loop and the values they accept; anything else would silently mean the default.
CHOICES = {"student_schedule": ("staged", "joint"), "student_init": ("fresh", "teacher"),
           "normalization": ("camvid", "thesis")}


def check_options(cfg: Mapping[str, Any]) -> None:
    """Refuses settings that would run but silently mean something else than what was asked."""
    for name, allowed in CHOICES.items():
        if name in cfg and cfg[name] not in allowed:
            raise UserError(f"--{name}={cfg[name]}: expected {' or '.join(map(repr, allowed))}; the comment on "
                            f"{name.upper()} at the top of the script says what each does.")
    labeled = cfg.get("joint_labeled_share", 0.5)
    if not 0 < labeled < 1:
        raise UserError(f"--joint_labeled_share={labeled}: the labeled share of each joint batch, between 0 and 1 "
                        "(both ends excluded: a joint batch needs crops of both kinds).")
    images = cfg.get("pseudo_image_share", 1.0)
    if not 0 < images <= 1:
        raise UserError(f"--pseudo_image_share={images}: the share of the pseudo-labeled frames the student learns "
                        "from, above 0 and at most 1 (1 = all of them).")
    share = cfg.get("pseudo_class_share", 0.0)
    if not 0 <= share <= 1:
        raise UserError(f"--pseudo_class_share={share}: a share of each class's pixels, between 0 and 1.")
    if share > 0 and cfg.get("pseudo_threshold", 0.0) <= 0:
        raise UserError(f"--pseudo_class_share={share} lowers PSEUDO_THRESHOLD for the classes it thins out, but "
                        "the threshold is 0 and keeps everything: set --pseudo_threshold too, e.g. 0.8.")
    drop = cfg.get("pseudo_feature_drop", 0.0)
    if not 0 <= drop < 1:
        raise UserError(f"--pseudo_feature_drop={drop}: the share of encoder feature channels dropped for the "
                        "perturbed copy of each pseudo-labeled crop, at least 0 (off) and below 1, e.g. 0.5.")
    momentum = cfg.get("pseudo_ema", 0.0)
    if not 0 <= momentum < 1:
        raise UserError(f"--pseudo_ema={momentum}: the momentum of the mean teacher, at least 0 (off) and below 1, "
                        "e.g. 0.99.")
    if cfg.get("pretrained_path") and not cfg.get("pretrained"):
        raise UserError(f"--pretrained_path={cfg['pretrained_path']} holds ImageNet weights, but --pretrained=False "
                        "trains from scratch: set --pretrained=True to start from the file, or leave out "
                        "--pretrained_path.")
    if cfg.get("init_checkpoint"):
        if not Path(cfg["init_checkpoint"]).is_file():
            raise UserError(f"--init_checkpoint={cfg['init_checkpoint']} does not exist: give a SwiftNet checkpoint "
                            "(one of ours, or a state dict of the reference code).")
        if cfg.get("pretrained_path"):
            raise UserError(f"--init_checkpoint={cfg['init_checkpoint']} replaces the ImageNet weights of "
                            f"--pretrained_path={cfg['pretrained_path']}: leave one of them out.")
    if cfg.get("pseudo_align") and not cfg.get("pseudo_soft"):
        raise UserError("--pseudo_align=True aligns the class distribution of PSEUDO_SOFT's targets, the teacher's "
                        "softmax: set --pseudo_soft=True too (hard pseudo-labels have no distribution to align).")
    if momentum > 0 and not (cfg.get("pseudo_soft") and cfg.get("student_init") == "teacher"):
        raise UserError(f"--pseudo_ema={momentum} moves the teacher that gives PSEUDO_SOFT's targets towards a "
                        "student that started from it: set --pseudo_soft=True and --student_init=teacher (a fresh "
                        "student's weights cannot be averaged with the teacher's).")


def start_run(namespace: Mapping[str, Any], argv: Sequence[str], demo_overrides: Mapping[str, Any], name: str,
              make_demo_data: Callable[[str], Any]) -> tuple[Config, Runtime, Run]:
    """Config from the script's constants and the command line, the device, and the run directory."""
    cfg = configure(namespace, argv, demo_overrides)
    check_options(cfg)  # before the run directory records a config that cannot run
    rt = setup(cfg.device)
    if cfg.demo and rt.is_main:
        make_demo_data(cfg.data_root)
    # Rank 0 picks and prepares the folder; the other processes follow once it is ready.
    defaults = constants_of(namespace)
    folder = rt.broadcast(choose_run_dir(cfg, name, defaults=defaults) if rt.is_main else None)
    run = Run(folder, cfg, writer=True, defaults=defaults) if rt.is_main else None
    rt.barrier()
    return cfg, rt, run if rt.is_main else Run(folder, cfg, writer=False, defaults=defaults)


@dataclass
class Candidate:
    """A trained model known by its best checkpoint and that checkpoint's validation score."""

    name: str
    path: Path
    val: float
    of_this_run: bool = True  # False for TEACHER_CHECKPOINT, which another run wrote


class SelfTraining:
    metric_key = "val_iou"  # field of best checkpoints (the thesis's name)
    score_key = "miou"  # summary.json uses val_<score_key> and test_<score_key>

    def __init__(self, cfg: Config, rt: Runtime, run: Run):
        check_options(cfg)
        self.cfg, self.rt, self.run = cfg, rt, run
        self.save_dir = Path(cfg.save_dir)
        # The teacher of the current iteration, kept in memory for PSEUDO_SOFT's targets.
        self.soft_teacher: nn.Module | None = None
        # The student's PSEUDO_ALIGN, which the pseudo-labeled batches apply to those targets.
        self.alignment: DistributionAlignment | None = None

    # What a task provides.
    def new_model(self, fresh: bool = False) -> nn.Module:
        """`fresh`: a model to be trained from its initialisation; else one about to load a checkpoint."""
        raise NotImplementedError

    def labeled_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        raise NotImplementedError

    def pseudo_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        raise NotImplementedError

    def joint_phase(self, name: str, iteration: int, epochs: int, lr: float) -> Phase:
        """Batches of labeled and pseudo-labeled crops mixed by `joint_shares`."""
        raise NotImplementedError

    @property
    def joint_shares(self) -> list[float]:
        """Shares of a joint batch: labeled, pseudo-labeled (JOINT_LABELED_SHARE)."""
        return [self.cfg.joint_labeled_share, 1 - self.cfg.joint_labeled_share]

    def labeled_class_counts(self) -> torch.Tensor:
        """How many labeled pixels (or images) each class has: PSEUDO_ALIGN's target distribution."""
        raise NotImplementedError

    def validate(self, model: nn.Module) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def test(self, model: nn.Module, title: str) -> dict[str, Any]:
        raise NotImplementedError

    def pseudo_label(self, teacher: nn.Module, iteration: int, teacher_info: Candidate) -> dict[str, Any]:
        """Labels the unlabeled set with `teacher`, keeps it for the student, returns its quality."""
        raise NotImplementedError

    def pictures(self, model: nn.Module, tag: str) -> None:
        """Pictures of a few predictions for the run directory; tasks without pictures keep this."""

    # The loop.
    def model_from(self, candidate: Candidate) -> nn.Module:
        checkpoint = load_checkpoint(candidate.path)
        if candidate.of_this_run:
            self.run.check_own(checkpoint, candidate.path)
        model = self.new_model()
        load_weights(model, checkpoint, candidate.path)
        return model

    def _fresh_model(self, salt: int) -> nn.Module:
        """Seeded per model, so a resumed run builds the same initial weights as the interrupted one."""
        seed_everything(self.cfg.seed * 1009 + salt)
        return self.new_model(fresh=True)

    def _fit(self, model: nn.Module, phase: Phase, best: Best) -> dict[str, Any]:
        return fit(model, phase, best, self.run, self.rt, self.validate, self.cfg.eval_each, self.cfg.compile)

    def train_teacher(self) -> Candidate:
        """The supervised teacher: trained here, or taken from TEACHER_CHECKPOINT to compare student options."""
        if self.run.summary["teacher"]:  # trained and tested by an earlier process of this run: only found again
            return self._teacher()[0]
        with self.run.timed("teacher"):
            teacher, best_epoch = self._teacher()
            model = self.model_from(teacher)
            self.run.summary["teacher"] = {f"val_{self.score_key}": teacher.val, "best_epoch": best_epoch,
                                           **self.test(model, "teacher")}
            self.pictures(model, "teacher")
        return teacher

    def _teacher(self) -> tuple[Candidate, int | None]:
        """The teacher and its best epoch; training it resumes or skips what an earlier process did."""
        cfg = self.cfg
        if cfg.teacher_checkpoint:
            teacher = self._given_teacher(Path(cfg.teacher_checkpoint))
            return teacher, load_checkpoint(teacher.path).get("epoch")
        best = Best(self.save_dir / "teacher_best.pth.tar", self.metric_key)
        result = self._fit(self._fresh_model(0), self.labeled_phase("teacher", 0, cfg.teacher_epochs, cfg.teacher_lr),
                           best)
        return Candidate("teacher", best.path, best.score), result["best_epoch"]

    def _given_teacher(self, path: Path) -> Candidate:
        """A teacher from another run, validated here so that promotion compares like with like."""
        teacher = Candidate("teacher", path, math.nan, of_this_run=False)
        score, _ = self.validate(self.model_from(teacher))
        return replace(teacher, val=score)

    def new_student(self, iteration: int, teacher: Candidate) -> nn.Module:
        """A fresh model (the thesis), or the teacher's weights, which saves the student relearning
        what the teacher knows when the compute budget is short (STUDENT_INIT)."""
        return self._fresh_model(iteration) if self.cfg.student_init == "fresh" else self.model_from(teacher)

    def train_student(self, iteration: int, teacher: Candidate) -> Candidate:
        cfg = self.cfg
        model = self.new_student(iteration, teacher)
        best = Best(self.save_dir / f"student_it{iteration}_best.pth.tar", self.metric_key)
        # The phase that learns from pseudo-labels moves the soft teacher along (PSEUDO_EMA).
        mean_teacher = MeanTeacher(self.soft_teacher, model, cfg.pseudo_ema) if cfg.pseudo_ema > 0 else None
        self.alignment = DistributionAlignment(self.labeled_class_counts(), self.rt) if cfg.pseudo_align else None
        extras = dict(mean_teacher=mean_teacher, alignment=self.alignment)
        if cfg.student_schedule == "joint":
            self._fit(model, replace(self.joint_phase(f"it{iteration}_joint", iteration, cfg.pseudo_epochs,
                                                      cfg.finetune_lr), **extras), best)
        else:
            self._fit(model, replace(self.pseudo_phase(f"it{iteration}_pseudo", iteration, cfg.pseudo_epochs,
                                                       cfg.pseudo_lr), **extras), best)
            self._fit(model, self.labeled_phase(f"it{iteration}_finetune", iteration, cfg.finetune_epochs,
                                                cfg.finetune_lr), best)
        return Candidate(f"student_it{iteration}", best.path, best.score)

    def promote(self, teacher: Candidate, student: Candidate) -> tuple[Candidate, bool]:
        """The student teaches the next iteration only if it validates better (or PROMOTE_ALWAYS, as the thesis)."""
        promoted = self.cfg.promote_always or student.val > teacher.val
        return (student if promoted else teacher), promoted

    def iterate(self, teacher: Candidate, iteration: int) -> Candidate:
        """One iteration: pseudo-label with `teacher`, train a student, test it, maybe promote it."""
        recorded = {e["iteration"]: e for e in self.run.summary["iterations"]}
        if iteration in recorded:
            entry = recorded[iteration]
            student = Candidate(f"student_it{iteration}", self.save_dir / f"student_it{iteration}_best.pth.tar",
                                entry[f"val_{self.score_key}"])
            return student if entry["promoted"] else teacher
        with self.run.timed(f"it{iteration}_pseudo_label"):
            teacher_model = self.model_from(teacher)
            quality = self.pseudo_label(teacher_model, iteration, teacher)
            self.soft_teacher = teacher_model if self.cfg.pseudo_soft else None
        with self.run.timed(f"it{iteration}_student"):
            student = self.train_student(iteration, teacher)
            next_teacher, promoted = self.promote(teacher, student)
            model = self.model_from(student)
            entry = {"iteration": iteration, f"val_{self.score_key}": student.val,
                     **self.test(model, f"student, iteration {iteration}"),
                     "promoted": promoted, "teacher": teacher.name, **quality}
            self.pictures(model, f"it{iteration}")
        self.run.summary["iterations"].append(entry)
        self.run.summary["current_teacher"] = str(next_teacher.path)
        self.run.save_summary()
        self.print_iterations()
        return next_teacher

    def finish(self) -> None:
        self.run.summary["finished"] = True
        self.run.save_summary()
        if self.rt.is_main:
            tqdm.write(f"Run record: {self.run.folder}")
        teardown()

    def print_iterations(self) -> None:
        """The per-iteration table: teacher first, then every student."""
        if not self.rt.is_main:
            return
        key = self.score_key
        rows = [("teacher", self.run.summary["teacher"], "")]
        rows += [(f"iteration {e['iteration']}", e, "yes" if e["promoted"] else "no")
                 for e in self.run.summary["iterations"]]
        extra = [k for k in ("pseudo_acc", "pseudo_pixel_acc", "pseudo_miou", "pseudo_ignored_frac")
                 if any(k in e for _, e, _ in rows)]
        header = f"{'model':<12} {'val ' + key:>9} {'test ' + key:>9} " + "".join(f"{k:>20}" for k in extra)
        lines = [header + f"{'promoted':>10}"]
        for name, e, promoted in rows:
            values = "".join(f"{_fmt(e.get(k)):>20}" for k in extra)
            lines.append(f"{name:<12} {_fmt(e.get('val_' + key)):>9} {_fmt(e.get('test_' + key)):>9} "
                         f"{values}{promoted:>10}")
        tqdm.write("\n".join(lines))


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
