"""Checkpoints: dicts of tensors and plain values only, written atomically and read with `weights_only=True`,
so loading one can never run code. Best checkpoints keep the thesis's fields (`iteration`, `epoch`, `state_dict`,
`optimizer`, `val_iou` or `val_acc`) plus the run's config and id. To see what one holds:

    python -m utils.checkpoint saved_models/pseudo_cam/teacher_best.pth.tar
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import UserError
from utils.io import atomic_open


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> None:
    fields.setdefault("saved_at", datetime.datetime.now().isoformat(timespec="seconds"))
    try:
        with atomic_open(path, "wb") as f:
            torch.save(fields, f)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        if "unexpected pos" in reason:  # torch's zip writer on a short write
            reason = "the file was cut short: is the disk full?"
        raise UserError(f"Cannot write checkpoint {path} ({reason}). The previous file is kept: free some disk "
                        f"space in {Path(path).parent} and run the same command again to resume, or start over in "
                        "a writable place (--save_dir=PATH, --run_dir=PATH).") from error


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist. Check SAVE_DIR (or the path), or train the model "
                        "again: --resume=False starts a run over.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a damaged file; all mean the same here
        text = str(error)
        lines = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
        if "GLOBAL" in text:  # a pickle that asks for Python objects, not only tensors and plain values
            detail = next(line for line in lines if "GLOBAL" in line).split(". Please use")[0].rstrip(".")
            raise UserError(f"{path} is not a plain checkpoint: it holds Python objects that would run code when "
                            f"loaded ({detail}). Do not trust it; checkpoints of this project hold tensors and "
                            "plain values only.") from error
        reason = lines[0] if "WeightsUnpickler error:" in text else (text.splitlines() or [type(error).__name__])[0]
        raise UserError(f"Checkpoint {path} is damaged or not a checkpoint ({reason}). Restore a copy, or "
                        "train it again: --resume=False starts its run over.") from error
    if not isinstance(checkpoint, dict):
        raise UserError(f"Checkpoint {path} holds a {type(checkpoint).__name__}, not the dict of a checkpoint (or a "
                        "state dict): give a checkpoint of this project or a SwiftNet state dict.")
    return checkpoint


def is_state_dict(state: Any) -> bool:
    """Whether `state` is a model's weights: a dict of tensors."""
    return isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())


def load_weights(model: nn.Module, checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Loads `checkpoint['state_dict']`, explaining a mismatch (another class count, another model)."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise UserError(f"{path} holds no 'state_dict': it is not a model checkpoint of this project.")
    if not is_state_dict(state):
        raise UserError(f"{path}: its 'state_dict' is a {type(state).__name__}, not a dict of tensors: it is not a "
                        "model checkpoint of this project.")
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and own[name].shape != tensor.shape:
            raise UserError(f"{path} does not fit this model: {name} is {tuple(tensor.shape)} there and "
                            f"{tuple(own[name].shape)} here. Was it trained with another number of classes "
                            "or another architecture?")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}.")


def load_fitting(model: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> str:
    """Loads every tensor of `state` whose name and shape fit `model`; the rest of `model` keeps its fresh
    weights (a logits layer of another class count, say). Returns a report of what was loaded and what not."""
    own = model.state_dict()
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__} where a state dict should be: give a SwiftNet "
                        "checkpoint, ours or the reference code's.")
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    fitting = {name: value for name, value in tensors.items() if name in own and own[name].shape == value.shape}
    if not fitting:
        raise UserError(f"No tensor of {path} fits this model (it holds {len(tensors)} tensors, e.g. "
                        f"{list(tensors)[:3]}). Give a checkpoint of this model: one of ours, or the reference "
                        "code's.")
    model.load_state_dict(fitting, strict=False)
    groups = Counter(name.split(".")[0] for name in fitting)
    lines = [f"Initialised from {path}: loaded {len(fitting)} of the model's {len(own)} tensors: "
             + ", ".join(f"{group} ({count})" for group, count in groups.items())]
    fresh = [name for name in own if name not in fitting]
    if fresh:
        lines.append(f"re-initialised {len(fresh)}:")
        lines += [f"  {name} {tuple(own[name].shape)}"
                  + (f", {tuple(tensors[name].shape)} in the file" if name in tensors else ", not in the file")
                  for name in fresh]
    unused = [name for name in tensors if name not in own]
    if unused:
        lines.append(f"not used, unknown to this model: {', '.join(unused)}")
    return "\n".join(lines)


def parameter_count(state_dict: dict[str, torch.Tensor]) -> int:
    """Learned parameters only: BatchNorm's running statistics and counters are not parameters."""
    skip = ("running_mean", "running_var", "num_batches_tracked")
    return sum(t.numel() for name, t in state_dict.items() if not name.endswith(skip))


def describe(checkpoint: dict[str, Any]) -> str:
    shown = ("phase", "iteration", "epoch", "val_iou", "val_acc", "best_score", "saved_at")
    lines = [f"{key:>12}: {checkpoint[key]}" for key in shown if key in checkpoint]
    state = checkpoint.get("state_dict")
    if is_state_dict(state):
        lines.append(f"{'parameters':>12}: {parameter_count(state):,}")
    elif state is not None:
        lines.append(f"{'state_dict':>12}: a {type(state).__name__}, not a model's tensors")
    others = sorted(set(checkpoint) - {"config", "state_dict", *shown})
    if others:
        lines.append(f"{'also holds':>12}: {', '.join(others)}")
    config = checkpoint.get("config") if isinstance(checkpoint.get("config"), dict) else {}
    lines += [f"{'config':>12}  {key} = {value!r}" for key, value in config.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print what a checkpoint of this project holds.")
    parser.add_argument("paths", nargs="+", help="checkpoint files (.pth.tar)")
    try:
        for path in parser.parse_args(argv).paths:
            print(f"{path}\n{describe(load_checkpoint(path))}")
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
