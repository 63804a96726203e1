"""A tiny configurator in the spirit of nanoGPT's: the entry script's UPPER_CASE constants are the
configuration, and `--lower_case_name=value` overrides any of them, parsed to the constant's type so
that a typo fails at start-up, not hours later.
"""
from __future__ import annotations

import difflib
import json
import math
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

from utils.errors import UserError


class Config(dict):
    """The run's settings by lower-case name; attribute access for reading (`cfg.batch_size`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def constants_of(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The UPPER_CASE constants of a module namespace, by lower-case name."""
    return {k.lower(): v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, (bool, int, float, str, list))}


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def parse_value(name: str, text: str, default: Any) -> Any:
    """`text` as the type of `default`; a clear error naming the constant when it does not parse."""
    try:
        if isinstance(default, bool):
            return _BOOLEANS[text.lower()]
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(Fraction(text)) if "/" in text else float(text)
        if isinstance(default, list):
            items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t]
            kind = type(default[0]) if default else str
            return [parse_value(name, str(item), kind()) for item in items]
        return text
    except (KeyError, ValueError, ZeroDivisionError, json.JSONDecodeError):
        kind = type(default).__name__
        article = "an" if kind[0] in "aeiou" else "a"
        raise UserError(f"--{name}={text}: expected {article} {kind} like the default "
                        f"{name.upper()} = {default!r}.") from None


def configure(namespace: Mapping[str, Any], argv: Sequence[str],
              demo_overrides: Mapping[str, Any] | None = None) -> Config:
    """Constants of `namespace`, then the demo's if `--demo` is given, then `--name=value` overrides."""
    defaults = constants_of(namespace)
    cfg = Config(defaults)
    overrides: dict[str, str] = {}
    demo = "--demo" in argv
    for arg in argv:
        if arg == "--demo":
            continue
        if arg in ("-h", "--help"):
            print("Override any constant as --name=value; --demo runs on generated data. Constants and defaults:",
                  *(f"  --{name}={json.dumps(value)}" for name, value in defaults.items()), sep="\n")
            raise SystemExit(0)
        if not arg.startswith("--") or "=" not in arg:
            raise UserError(f"Cannot read argument {arg!r}: write --name=value (e.g. --batch_size=8), or --demo.")
        name, text = arg[2:].split("=", 1)
        if name not in defaults:
            close = difflib.get_close_matches(name, defaults, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise UserError(f"Unknown constant --{name}.{hint} Valid names: {', '.join(sorted(defaults))}.")
        overrides[name] = text
    if demo:
        cfg.update({k.lower(): v for k, v in (demo_overrides or {}).items()})
    cfg.update({name: parse_value(name, text, defaults[name]) for name, text in overrides.items()})
    cfg["demo"] = demo
    return cfg


def check_choice(cfg: Mapping[str, Any], name: str, allowed: Sequence[str]) -> None:
    """A string constant must be one of `allowed`: anything else would silently mean the default."""
    if cfg[name] not in allowed:
        raise UserError(f"--{name}={cfg[name]}: expected {' or '.join(map(repr, allowed))}; the comment on "
                        f"{name.upper()} at the top of the script says what each does.")


def check_ranges(cfg: Mapping[str, Any], rules: Mapping[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Refuses a constant whose value its rule rejects, naming what it allows (NaN fails every comparison)."""
    for name, (allowed, text) in rules.items():
        if not allowed(cfg[name]):
            raise UserError(f"--{name}={cfg[name]}: {text}.")


def _rate(value: float) -> bool:
    return math.isfinite(value) and value >= 0


# The constants both scripts share, and the values that mean something.
LOOP_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": (lambda v: v >= 2, "the batch of all processes together, at least 2 (BatchNorm needs two)"),
    "eval_batch_size": (lambda v: v >= 1, "images per evaluation batch, at least 1"),
    "eval_each": (lambda v: v >= 1, "validate every this many epochs, at least 1"),
    **{f"{phase}_epochs": (lambda v: v >= 1, "at least 1") for phase in ("teacher", "pseudo", "finetune")},
    **{f"{phase}_lr": (_rate, "a learning rate, 0 or more") for phase in ("teacher", "pseudo", "finetune")},
    "lr_min": (_rate, "the rate the cosine schedule ends at, 0 or more"),
    "weight_decay": (_rate, "0 or more"),
    "no_iter": (lambda v: v >= 0, "the number of pseudo-labeling iterations, 0 (the teacher alone) or more"),
    "labeled_fraction": (lambda v: 0 < v <= 1, "the share of the train images that keeps its labels, in (0, 1]"),
    "max_unlabeled": (lambda v: v >= 0, "a cap on the unlabeled images, 0 for none"),
    "pseudo_threshold": (lambda v: 0 <= v <= 1, "a confidence between 0 (keep everything) and 1"),
    "joint_labeled_share": (lambda v: 0 < v < 1, "the labeled share of each student batch, between 0 and 1 (both "
                                                 "ends excluded: a mixed batch needs crops of both kinds)"),
    "unlabeled_weight": (_rate, "the weight of the unlabeled loss terms, 0 or more (1 as published)"),
    "pseudo_ema": (lambda v: 0 <= v < 1, "the momentum of the mean teacher, at least 0 (off) and below 1, e.g. 0.99"),
}


def check_loop(cfg: Mapping[str, Any]) -> None:
    """Refuses loop settings, common to both scripts, that would run but mean something else than asked,
    before anything is written (a value corrected later would be another config)."""
    check_choice(cfg, "student_init", ("fresh", "teacher"))
    check_ranges(cfg, LOOP_RULES)
