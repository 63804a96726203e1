"""Our SwiftNet-RN18 against the reference code, run side by side with the same weights.

    python bench/swiftnet_parity.py --reference PATH_TO_orsic_swiftnet_CHECKOUT

Builds the reference model (resnet18 + SemsegModel, as its configs do), gives every tensor random
values (BatchNorm statistics included), loads them into ours through `convert_reference_state_dict`
and compares logits in eval mode at 360x480 and 720x960, then logits and BatchNorm running
statistics after one training forward. Prints the largest absolute difference of each.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.swiftnet import SwiftNet, convert_reference_state_dict  # noqa: E402

MEAN, STD = (105.0, 108.4, 110.3), (78.3, 79.5, 78.3)


def reference_model(root: Path, num_classes: int) -> torch.nn.Module:
    """The reference's model; its `models` package shadows ours only while it is imported."""
    ours = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "models"}
    sys.path.insert(0, str(root))
    # Its evaluation code imports a Cython extension that only counts confusion matrices.
    sys.modules["lib"], sys.modules["lib.cylib"] = types.ModuleType("lib"), types.ModuleType("lib.cylib")
    try:
        from models.resnet.resnet_single_scale import resnet18
        from models.semseg import SemsegModel
        return SemsegModel(resnet18(pretrained=False, efficient=False, mean=MEAN, std=STD), num_classes)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.split(".")[0] == "models"]:
            del sys.modules[name]
        sys.modules.update(ours)


def randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("img_mean", "img_std", "num_batches_tracked")):
                continue
            values = torch.randn(tensor.shape, generator=generator) * 0.1
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            tensor.copy_(values)


def compare_construction(reference: torch.nn.Module, ours: torch.nn.Module) -> None:
    """BatchNorm momenta and the spread of the fresh weights, tensor by tensor (before any copying)."""
    def momenta(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {f"{name}.weight": torch.tensor(module.momentum) for name, module in model.named_modules()
                if isinstance(module, torch.nn.BatchNorm2d)}

    theirs, mine = convert_reference_state_dict(momenta(reference)), momenta(ours)
    print(f"BatchNorm momenta: {len(mine)} layers, "
          f"equal: {theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)}")
    reference_weights = convert_reference_state_dict(reference.state_dict())
    ratios = {name: float(tensor.std() / reference_weights[name].std()) for name, tensor in ours.state_dict().items()
              if name.endswith("weight") and tensor.ndim == 4 and tensor.numel() >= 4096}
    worst = max(ratios, key=lambda name: abs(ratios[name] - 1))
    print(f"initial weight spread: {len(ratios)} convolutions of at least 4096 weights, std ours/reference "
          f"{min(ratios.values()):.3f}..{max(ratios.values()):.3f} (furthest from 1: {worst})")


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/orsic/swiftnet")
    parser.add_argument("--classes", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    reference = reference_model(args.reference, args.classes)
    ours = SwiftNet(args.classes, MEAN, STD)
    reference_count = sum(p.numel() for p in reference.parameters())
    our_count = sum(p.numel() for p in ours.parameters())
    print(f"parameters: reference {reference_count:,}, ours {our_count:,}")
    compare_construction(reference, ours)
    randomise(reference, seed=1)
    ours.load_state_dict(convert_reference_state_dict(reference.state_dict()), strict=True)

    reference.eval(), ours.eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for height, width in [(360, 480), (720, 960)]:
            images = torch.randint(0, 256, (2, 3, height, width), generator=generator).float()
            theirs, _ = reference(images.clone(), None, (height, width))
            mine = ours(images)
            print(f"eval {height}x{width}: logits {tuple(mine.shape)}, largest difference "
                  f"{largest_difference(theirs, mine):.3g}, identical: {torch.equal(theirs, mine)}")

    reference.train(), ours.train()
    images = torch.randint(0, 256, (2, 3, 360, 480), generator=generator).float()
    with torch.no_grad():
        theirs, _ = reference(images.clone(), None, (360, 480))
        mine = ours(images)
    print(f"train 360x480: logits largest difference {largest_difference(theirs, mine):.3g}, "
          f"identical: {torch.equal(theirs, mine)}")
    after = convert_reference_state_dict(reference.state_dict())
    statistics = [name for name in after if name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    worst = max(largest_difference(after[name], ours.state_dict()[name]) for name in statistics)
    same = all(torch.equal(after[name], ours.state_dict()[name]) for name in statistics)
    print(f"train 360x480: {len(statistics)} BatchNorm statistics, largest difference {worst:.3g}, identical: {same}")


if __name__ == "__main__":
    main()
