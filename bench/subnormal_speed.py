"""CPU training steps from a late checkpoint, with subnormal floats kept and flushed to zero.

    python bench/subnormal_speed.py saved_models/NAME/teacher_best.pth.tar [--steps 20] [--crop 96]

Weights of channels that no longer get gradients decay under Adam's weight decay until they are
subnormal, and x86 arithmetic on subnormal floats is many times slower. The runtime flushes them
(`utils.dist.setup`); this measures what that buys on a checkpoint that holds them. The model and
its Adam state come from the checkpoint; batches are random uint8 crops, the same in both runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.camvid import IGNORE_INDEX, NUM_CLASSES, STATISTICS  # noqa: E402
from models.swiftnet import swiftnet_rn18  # noqa: E402
from utils.checkpoint import load_checkpoint, load_weights  # noqa: E402
from utils.engine import cross_entropy  # noqa: E402


def subnormal_share(tensors: list[torch.Tensor]) -> float:
    tiny = torch.finfo(torch.float32).tiny
    floats = [t.float() for t in tensors if t.is_floating_point()]
    return sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in floats) / sum(t.numel() for t in floats)


def seconds_per_step(state: dict, path: Path, flush: bool, steps: int, batch: int, crop: int) -> float:
    torch.set_flush_denormal(flush)
    model = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"])
    load_weights(model, state, path)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    optimizer.load_state_dict(state["optimizer"])
    model.train()
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 2):  # two steps of warm-up
        images = torch.randint(0, 256, (batch, 3, crop, crop), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, NUM_CLASSES, (batch, crop, crop), generator=generator)
        began = time.perf_counter()
        loss = cross_entropy(model(images), labels, IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint with an optimizer state (teacher_best.pth.tar)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    args = parser.parse_args(argv)
    state = load_checkpoint(args.checkpoint)
    adam = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    print(f"{args.checkpoint} (epoch {state['epoch']}): subnormal share of weights "
          f"{100 * subnormal_share(list(state['state_dict'].values())):.1f}%, of Adam state "
          f"{100 * subnormal_share(adam):.1f}%; {torch.get_num_threads()} threads")
    kept = seconds_per_step(state, args.checkpoint, False, args.steps, args.batch, args.crop)
    flushed = seconds_per_step(state, args.checkpoint, True, args.steps, args.batch, args.crop)
    print(f"median training step, batch {args.batch} crop {args.crop}: subnormals kept {kept:.3f} s, "
          f"flushed {flushed:.3f} s ({kept / flushed:.1f}x)")


if __name__ == "__main__":
    main()
