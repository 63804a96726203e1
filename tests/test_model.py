"""SwiftNet-RN18: output size, size of the network, built-in normalisation, local encoder weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from models.swiftnet import CAMVID_MEAN, CAMVID_STD, SwiftNet, imagenet_encoder, swiftnet_rn18
from utils.checkpoint import parameter_count
from utils.errors import UserError

NUM_CLASSES = 11


@pytest.fixture(scope="module")
def model() -> SwiftNet:
    torch.manual_seed(0)
    return swiftnet_rn18(NUM_CLASSES).eval()


def random_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("height, width", [(180, 240), (50, 70), (64, 64)])
def test_logits_have_the_input_size_even_when_not_divisible_by_32(model: SwiftNet, height: int, width: int) -> None:
    with torch.no_grad():
        logits = model(random_images(1, height, width))
    assert logits.shape == (1, NUM_CLASSES, height, width)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_learned_parameters_match_swiftnet_rn18(model: SwiftNet) -> None:
    learned = sum(p.numel() for p in model.parameters())
    assert 11_500_000 <= learned <= 12_200_000
    # The checkpoint tool counts the same parameters from a state dict (BN statistics excluded).
    assert parameter_count(model.state_dict()) == learned


def test_parameter_count_follows_the_number_of_classes() -> None:
    small, large = SwiftNet(2), SwiftNet(12)
    difference = sum(p.numel() for p in large.parameters()) - sum(p.numel() for p in small.parameters())
    assert difference == 10 * 128  # only the 1x1 logits convolution (128 inputs, no bias) grows


def test_uint8_and_float_inputs_give_identical_outputs(model: SwiftNet) -> None:
    images = random_images(2, 48, 64, seed=1)
    with torch.no_grad():
        assert torch.equal(model(images), model(images.float()))


def test_the_model_normalises_with_camvid_statistics(model: SwiftNet) -> None:
    images = random_images(1, 32, 32, seed=2)
    seen = []
    hook = model.stem[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        hook.remove()
    mean = torch.tensor(CAMVID_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CAMVID_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (images.float() - mean) / std)
    # The statistics are constants of the code, not state to be saved with the weights.
    assert not any(name in model.state_dict() for name in ("mean", "std"))


def test_a_missing_pretrained_path_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pth"
    with pytest.raises(UserError, match=f"PRETRAINED_PATH={missing} does not exist"):
        imagenet_encoder(pretrained=True, pretrained_path=str(missing))


@pytest.mark.parametrize("wrapped", [False, True])
def test_encoder_weights_load_from_a_local_state_dict(tmp_path: Path, wrapped: bool) -> None:
    torch.manual_seed(3)
    source = resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source} if wrapped else source, path)

    encoder = imagenet_encoder(pretrained=True, pretrained_path=str(path))
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, source[name]), name

    model = swiftnet_rn18(NUM_CLASSES, pretrained=True, pretrained_path=str(path))
    assert torch.equal(model.stem[0].weight, source["conv1.weight"])
    assert torch.equal(model.stages[3][1].conv2.weight, source["layer4.1.conv2.weight"])
    scratch = swiftnet_rn18(NUM_CLASSES, pretrained=False, pretrained_path=str(path))
    assert not torch.equal(scratch.stem[0].weight, source["conv1.weight"])


def test_a_fresh_encoder_differs_from_the_local_weights(tmp_path: Path) -> None:
    # Guards the test above: without pretrained_path the weights must not match by accident.
    torch.manual_seed(3)
    source = resnet18().state_dict()
    torch.manual_seed(4)
    fresh = imagenet_encoder(pretrained=False)
    assert not torch.equal(fresh.state_dict()["conv1.weight"], source["conv1.weight"])
