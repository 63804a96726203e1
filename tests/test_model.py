"""SwiftNet-RN18: the reference's size, initialisation and checkpoints; output size, normalisation,
local encoder weights, and starting a model from a checkpoint of another class count."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from models.swiftnet import SwiftNet, convert_reference_state_dict, swiftnet_rn18
from utils.checkpoint import load_fitting, parameter_count
from utils.errors import UserError

NUM_CLASSES = 11
MEAN, STD = (105.0, 108.4, 110.3), (78.3, 79.5, 78.3)


@pytest.fixture(scope="module")
def model() -> SwiftNet:
    torch.manual_seed(0)
    return SwiftNet(NUM_CLASSES, MEAN, STD).eval()


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)


def learned(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("height, width", [(180, 240), (50, 70), (64, 64)])
def test_logits_have_the_input_size_even_when_not_divisible_by_32(model: SwiftNet, height: int, width: int) -> None:
    with torch.no_grad():
        logits = model(random_images(1, height, width))
    assert logits.shape == (1, NUM_CLASSES, height, width)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


# The reference (orsic/swiftnet) at 11 and 19 classes, counted by its own code.
@pytest.mark.parametrize("classes, count", [(11, 11_796_039), (19, 11_797_071)])
def test_the_parameter_count_is_the_references(classes: int, count: int) -> None:
    model = SwiftNet(classes, MEAN, STD)
    assert learned(model) == count
    assert parameter_count(model.state_dict()) == count  # the checkpoint tool counts the same


def test_only_the_logits_layer_grows_with_the_classes() -> None:
    assert learned(SwiftNet(12, MEAN, STD)) - learned(SwiftNet(2, MEAN, STD)) == 10 * (128 + 1)  # weights and bias


def test_the_pyramid_has_three_levels_of_42_channels_and_slow_batchnorm(model: SwiftNet) -> None:
    assert model.spp.grids == (8, 4, 2)
    assert [level.conv.out_channels for level in model.spp.levels] == [42, 42, 42]
    assert model.spp.fuse.conv.in_channels == 128 + 3 * 42
    spp_norms = [m for m in model.spp.modules() if isinstance(m, nn.BatchNorm2d)]
    other_norms = [m for name, m in model.named_modules()
                   if isinstance(m, nn.BatchNorm2d) and not name.startswith("spp")]
    assert len(spp_norms) == 5 and all(m.momentum == 0.005 for m in spp_norms)
    assert len(other_norms) == 20 + 6 + 1 and all(m.momentum == 0.1 for m in other_norms)
    assert model.logits.conv.bias is not None


def test_convolutions_outside_the_logits_are_kaiming_normal_fan_out() -> None:
    torch.manual_seed(1)
    model = SwiftNet(NUM_CLASSES, MEAN, STD)
    for conv in [model.upsample[0].blend_conv.conv, model.upsample[2].bottleneck.conv, model.spp.fuse.conv,
                 model.layer3[0].conv1]:
        out_ch, _, kh, kw = conv.weight.shape
        expected = math.sqrt(2 / (out_ch * kh * kw))
        assert conv.weight.mean().abs() < 0.05 * expected
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)
    # The logits keep PyTorch's default: uniform within 1/sqrt(fan_in), far narrower than kaiming fan_out.
    bound = 1 / math.sqrt(128)
    assert model.logits.conv.weight.abs().max() <= bound
    assert model.logits.conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


def reference_names_and_shapes(classes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor of the reference's SemsegModel(resnet18(...)): its name there -> (our name, shape)."""
    def norm(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.norm.{k}": (ch,) for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.norm.num_batches_tracked": ()}

    ours: dict[str, tuple[int, ...]] = {}
    table: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, tensor in resnet18().state_dict().items():
        if not name.startswith("fc."):
            table[f"backbone.{name}"] = (name, tuple(tensor.shape))
    spp = {"spp_bn": ("bottleneck", 512, 128), "spp_fuse": ("fuse", 254, 128),
           **{f"spp{i}": (f"levels.{i}", 128, 42) for i in range(3)}}
    for theirs, (mine, in_ch, out_ch) in spp.items():
        ours = norm("x", in_ch) | {"x.conv.weight": (out_ch, in_ch, 1, 1)}
        table |= {f"backbone.spp.spp.{theirs}{k[1:]}": (f"spp.{mine}{k[1:]}", s) for k, s in ours.items()}
    for index, skip in enumerate((256, 128, 64)):
        parts = norm("bottleneck", skip) | {"bottleneck.conv.weight": (128, skip, 1, 1)}
        parts |= norm("blend_conv", 128) | {"blend_conv.conv.weight": (128, 128, 3, 3)}
        table |= {f"backbone.upsample.{index}.{k}": (f"upsample.{index}.{k}", s) for k, s in parts.items()}
    logits = norm("logits", 128) | {"logits.conv.weight": (classes, 128, 1, 1), "logits.conv.bias": (classes,)}
    return table | {k: (k, s) for k, s in logits.items()}


def reference_state_dict(classes: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random tensors under the reference's names (with its normalisation buffers), and the same under ours."""
    generator = torch.Generator().manual_seed(seed)
    theirs, mine = {}, {}
    for name, (our_name, shape) in reference_names_and_shapes(classes).items():
        if name.endswith("num_batches_tracked"):
            tensor = torch.tensor(7)
        elif name.endswith("running_var"):
            tensor = torch.rand(shape, generator=generator) + 0.5
        else:
            tensor = torch.randn(shape, generator=generator) * 0.1
        theirs[name], mine[our_name] = tensor, tensor
    theirs["backbone.img_mean"] = torch.tensor(MEAN).view(1, 3, 1, 1)
    theirs["backbone.img_std"] = torch.tensor(STD).view(1, 3, 1, 1)
    return theirs, mine


def test_a_reference_state_dict_loads_and_gives_the_logits_of_the_same_tensors_under_our_names() -> None:
    theirs, mine = reference_state_dict(NUM_CLASSES)
    converted, direct = SwiftNet(NUM_CLASSES, MEAN, STD), SwiftNet(NUM_CLASSES, MEAN, STD)
    converted.load_state_dict(convert_reference_state_dict(theirs), strict=True)
    direct.load_state_dict(mine, strict=True)
    images = random_images(2, 96, 128, seed=5)
    with torch.no_grad():
        assert torch.equal(converted.eval()(images), direct.eval()(images))
    assert convert_reference_state_dict(mine).keys() == mine.keys()  # our own names pass unchanged


def test_uint8_and_float_inputs_give_identical_outputs(model: SwiftNet) -> None:
    images = random_images(2, 48, 64, seed=1)
    with torch.no_grad():
        assert torch.equal(model(images), model(images.float()))


def test_the_model_normalises_with_the_statistics_it_is_given(model: SwiftNet) -> None:
    images = random_images(1, 32, 32, seed=2)
    seen = []
    hook = model.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (images.float() - mean) / std)
    # The statistics are the run's setting, not state to be saved with the weights.
    assert not any(name in model.state_dict() for name in ("mean", "std"))


def test_a_missing_pretrained_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(UserError, match=f"PRETRAINED_PATH={missing} does not exist"):
        swiftnet_rn18(NUM_CLASSES, MEAN, STD, pretrained=True, pretrained_path=str(missing))


@pytest.mark.parametrize("wrapped", [False, True])
def test_encoder_weights_load_from_a_local_state_dict(tmp_path: Path, wrapped: bool) -> None:
    torch.manual_seed(3)
    source = resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source} if wrapped else source, path)

    model = swiftnet_rn18(NUM_CLASSES, MEAN, STD, pretrained=True, pretrained_path=str(path))
    for name, tensor in source.items():
        if not name.startswith("fc."):
            assert torch.equal(model.state_dict()[name], tensor), name
    scratch = swiftnet_rn18(NUM_CLASSES, MEAN, STD, pretrained=False)
    assert not torch.equal(scratch.conv1.weight, source["conv1.weight"])


def test_a_checkpoint_of_19_classes_starts_an_11_class_model_all_but_its_logits_convolution() -> None:
    theirs, mine = reference_state_dict(19)
    torch.manual_seed(4)
    model = SwiftNet(NUM_CLASSES, MEAN, STD)
    fresh_logits = model.logits.conv.weight.detach().clone()
    report = load_fitting(model, convert_reference_state_dict(theirs), "cityscapes.pt")

    state = model.state_dict()
    for name, tensor in mine.items():
        if not name.startswith("logits.conv."):
            assert torch.equal(state[name], tensor), name
    assert torch.equal(model.logits.conv.weight, fresh_logits)
    lines = report.splitlines()
    assert lines[0].startswith(f"Initialised from cityscapes.pt: loaded {len(state) - 2} of the model's {len(state)}")
    assert "layer4 (" in lines[0] and "logits (5)" in lines[0]
    assert lines[1:] == ["re-initialised 2:", "  logits.conv.weight (11, 128, 1, 1), (19, 128, 1, 1) in the file",
                         "  logits.conv.bias (11,), (19,) in the file"]


def test_a_checkpoint_of_which_nothing_fits_is_refused_with_its_name() -> None:
    with pytest.raises(UserError, match="No tensor of other.pt fits this model"):
        load_fitting(SwiftNet(NUM_CLASSES, MEAN, STD), {"fc.weight": torch.zeros(3, 3)}, "other.pt")
