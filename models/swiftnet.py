"""SwiftNet-RN18, single scale (Oršić et al., CVPR 2019), equal to the reference code (github.com/orsic/swiftnet)
in structure, initialisation and BatchNorm momenta, so that equal weights give equal logits and the reference's
checkpoints load through `convert_reference_state_dict`. It takes images in [0, 255], uint8 or float.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from utils.errors import UserError

DECODER_CH = 128
SPP_GRIDS = (8, 4, 2)  # the reference is given (8, 4, 2, 1) but builds three levels, so the 1x1 grid is unused
SPP_BN_MOMENTUM = 0.01 / 2  # the reference's pyramid; every other BatchNorm keeps PyTorch's 0.1


class BNReluConv(nn.Sequential):
    """Pre-activation convolution, SwiftNet's building block outside the encoder."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, bn_momentum: float = 0.1, bias: bool = False):
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(in_ch, momentum=bn_momentum),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias),
        ))


class SpatialPyramidPooling(nn.Module):
    """Average-pools the stride-32 features on grids that keep the image's aspect ratio (8 rows
    make 8x11 on a 4:3 image), and fuses the levels with the features."""

    def __init__(self, in_ch: int, out_ch: int = DECODER_CH, grids: Sequence[int] = SPP_GRIDS):
        super().__init__()
        self.grids = tuple(grids)
        level_ch = out_ch // len(self.grids)
        self.bottleneck = BNReluConv(in_ch, out_ch, 1, SPP_BN_MOMENTUM)
        self.levels = nn.ModuleList(BNReluConv(out_ch, level_ch, 1, SPP_BN_MOMENTUM) for _ in self.grids)
        self.fuse = BNReluConv(out_ch + level_ch * len(self.grids), out_ch, 1, SPP_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        aspect = size[1] / size[0]
        x = self.bottleneck(x)
        pyramid = [x]
        for grid, level in zip(self.grids, self.levels):
            pooled = F.adaptive_avg_pool2d(x, (grid, max(1, round(aspect * grid))))
            pyramid.append(F.interpolate(level(pooled), size, mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(pyramid, dim=1))


class Upsample(nn.Module):
    """One step of the upsampling path: 1x1 bottleneck on the skip, add, 3x3 blend."""

    def __init__(self, skip_ch: int, ch: int = DECODER_CH):
        super().__init__()
        self.bottleneck = BNReluConv(skip_ch, ch, 1)
        self.blend_conv = BNReluConv(ch, ch, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.bottleneck(skip)
        x = F.interpolate(x, skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.blend_conv(x + skip)


class SwiftNet(nn.Module):
    """Logits at the input resolution. The encoder's modules keep torchvision's names (conv1, bn1, layer1..4),
    so ImageNet weights load by name; the skips are the stages' outputs after their last ReLU, as in the reference.
    """

    def __init__(self, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        encoder = resnet18()
        self.conv1, self.bn1, self.relu, self.maxpool = encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool
        self.layer1, self.layer2 = encoder.layer1, encoder.layer2
        self.layer3, self.layer4 = encoder.layer3, encoder.layer4
        self.spp = SpatialPyramidPooling(512)
        self.upsample = nn.ModuleList([Upsample(256), Upsample(128), Upsample(64)])
        # The reference initialises every module of its backbone (encoder, pyramid, upsampling) so;
        # the logits layer, built outside it, keeps PyTorch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        self.logits = BNReluConv(DECODER_CH, num_classes, 1, bias=True)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, perturbed: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits of `images`; with `perturbed`, also the logits of the same features with Dropout2d(0.5) on every
        encoder stage the decoder reads, in training only, decoded in one batch with the clean ones (UniMatch's
        feature perturbation): then (logits, perturbed logits)."""
        x = (images.float() - self.mean) / self.std
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):  # a model made NHWC for bf16
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        if perturbed:
            features = [torch.cat([f, F.dropout2d(f, 0.5, self.training)]) for f in features]
        x = self.spp(features[-1])
        for up, skip in zip(self.upsample, reversed(features[:-1])):
            x = up(x, skip)
        logits = F.interpolate(self.logits(x), images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.chunk(2) if perturbed else logits


# The reference nests the pyramid one level deeper and names its parts otherwise; everything else
# has our name once "backbone." is taken off.
_REFERENCE_SPP = {"spp.spp.spp_bn.": "spp.bottleneck.", "spp.spp.spp_fuse.": "spp.fuse.",
                  **{f"spp.spp.spp{i}.": f"spp.levels.{i}." for i in range(len(SPP_GRIDS))}}
# Normalisation statistics the reference keeps as buffers; ours are the run's setting, not weights.
_REFERENCE_STATISTICS = ("backbone.img_mean", "backbone.img_std", "backbone.img_scale")


def convert_reference_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the reference SwiftNet with our names; names that are already ours pass unchanged."""
    converted = {}
    for name, tensor in state_dict.items():
        if name in _REFERENCE_STATISTICS:
            continue
        name = name.removeprefix("backbone.")
        for old, new in _REFERENCE_SPP.items():
            if name.startswith(old):
                name = new + name[len(old):]
        converted[name] = tensor
    return converted


def imagenet_state_dict(pretrained_path: str = "") -> dict[str, torch.Tensor]:
    """ResNet-18's ImageNet weights: from `pretrained_path` if given (machines without internet), else downloaded."""
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise UserError(f"PRETRAINED_PATH={pretrained_path} does not exist: point it at a "
                            "ResNet-18 state dict (e.g. torchvision's resnet18-f37072fd.pth).")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            return state.get("state_dict", state)
        except Exception as error:  # damaged, truncated, not a state dict: all mean the same to the user
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise UserError(f"PRETRAINED_PATH={pretrained_path} cannot be read as a state dict ({reason}): give "
                            "a ResNet-18 state dict, e.g. torchvision's resnet18-f37072fd.pth.") from error
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # urllib, SSL and hash errors all mean the same to the user.
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UserError(
            f"Could not download the ImageNet weights of ResNet-18 ({error}). Put {weights.url} at {cache}, "
            "or pass --pretrained_path=FILE with a local state dict, or train from scratch with "
            "--pretrained=False.") from error


def swiftnet_rn18(num_classes: int, mean: Sequence[float], std: Sequence[float], pretrained: bool = False,
                  pretrained_path: str = "") -> SwiftNet:
    """SwiftNet-RN18; its encoder ImageNet-initialised when `pretrained`, else from scratch."""
    model = SwiftNet(num_classes, mean, std)
    if pretrained:
        encoder = {name: tensor for name, tensor in imagenet_state_dict(pretrained_path).items()
                   if not name.startswith("fc.")}
        unexpected = model.load_state_dict(encoder, strict=False).unexpected_keys
        if unexpected:
            raise UserError(f"PRETRAINED_PATH={pretrained_path} is not a ResNet-18 state dict: it holds "
                            f"{unexpected[:3]}, which ResNet-18 does not have.")
    return model
