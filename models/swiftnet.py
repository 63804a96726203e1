"""SwiftNet single-scale with a ResNet-18 encoder (Oršić et al., CVPR 2019).

The encoder is torchvision's ResNet-18; its four stages give features at strides 4, 8, 16
and 32. Spatial pyramid pooling widens the receptive field of the stride-32 features, and a
light upsampling path (one module per skip) brings the result back to stride 4, where a
logits layer predicts the classes. The decoder is tiny (about 0.6M parameters) because the
paper's point is that a pretrained encoder and a cheap decoder are enough for real-time
segmentation.

The model takes images in [0, 255] (uint8 or float) and normalises them itself, so that
every data path (GPU-resident uint8 tensors, CPU tensors, single images) feeds it the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from utils.errors import UserError

# Statistics of CamVid in [0, 255] used by the thesis (RGB).
CAMVID_MEAN = (111.376, 63.110, 83.670)
CAMVID_STD = (41.608, 54.237, 68.889)


class BNReluConv(nn.Sequential):
    """Pre-activation convolution: SwiftNet's building block throughout the decoder."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, bn_momentum: float = 0.1):
        super().__init__(
            nn.BatchNorm2d(in_ch, momentum=bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        )


class SpatialPyramidPooling(nn.Module):
    """Average-pools the stride-32 features on grids of several sizes and fuses them.

    Grids keep the image's aspect ratio (a grid of 8 on a 4:3 image is 8x11), as in SwiftNet.
    """

    def __init__(self, in_ch: int, out_ch: int = 128, grids: Sequence[int] = (8, 4, 2, 1)):
        super().__init__()
        self.grids = tuple(grids)
        level_ch = out_ch // len(self.grids)
        self.bottleneck = BNReluConv(in_ch, out_ch, kernel=1)
        self.levels = nn.ModuleList(BNReluConv(out_ch, level_ch, kernel=1) for _ in self.grids)
        self.fuse = BNReluConv(out_ch + level_ch * len(self.grids), out_ch, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = self.bottleneck(x)
        pyramid = [x]
        for grid, level in zip(self.grids, self.levels):
            pooled = F.adaptive_avg_pool2d(x, (grid, max(1, round(grid * width / height))))
            pyramid.append(F.interpolate(level(pooled), (height, width), mode="bilinear", align_corners=False))
        return self.fuse(torch.cat(pyramid, dim=1))


class Upsample(nn.Module):
    """One step of the upsampling path: 1x1 bottleneck on the skip, add, 3x3 blend."""

    def __init__(self, skip_ch: int, ch: int = 128):
        super().__init__()
        self.bottleneck = BNReluConv(skip_ch, ch, kernel=1)
        self.blend = BNReluConv(ch, ch, kernel=3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        skip = self.bottleneck(skip)
        x = F.interpolate(x, skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.blend(x + skip)


class SwiftNet(nn.Module):
    """SwiftNet-RN18, single scale. `forward` returns logits at the input resolution."""

    def __init__(self, num_classes: int, encoder: nn.Module | None = None,
                 mean: Sequence[float] = CAMVID_MEAN, std: Sequence[float] = CAMVID_STD,
                 decoder_ch: int = 128):
        super().__init__()
        encoder = encoder if encoder is not None else resnet18()
        self.stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool)
        self.stages = nn.ModuleList([encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4])
        self.spp = SpatialPyramidPooling(512, decoder_ch)
        self.upsample = nn.ModuleList([Upsample(256, decoder_ch), Upsample(128, decoder_ch), Upsample(64, decoder_ch)])
        self.logits = BNReluConv(decoder_ch, num_classes, kernel=1)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, perturbed: int = 0, feature_drop: float = 0.5) -> torch.Tensor:
        """Logits of `images`; with `perturbed` = k, followed by k more: the last k images decoded again from
        encoder features with `feature_drop` of their channels dropped (UniMatch's feature perturbation,
        PSEUDO_FEATURE_DROP). One encoder pass serves both, and the decoder sees both in one batch."""
        x = (images.float() - self.mean) / self.std
        if x.is_cuda:  # cuDNN's fastest convolutions (and the bf16 tensor cores) want NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        if perturbed:
            skips = [torch.cat([skip, F.dropout2d(skip[-perturbed:], feature_drop, training=True)]) for skip in skips]
        x = self.spp(skips[-1])
        for up, skip in zip(self.upsample, reversed(skips[:-1])):
            x = up(x, skip)
        return F.interpolate(self.logits(x), images.shape[-2:], mode="bilinear", align_corners=False)


def imagenet_encoder(pretrained: bool, pretrained_path: str = "") -> nn.Module:
    """A ResNet-18, ImageNet-initialised when `pretrained`: from `pretrained_path` if given (machines
    without internet), else torchvision's weights. Not `pretrained` is from scratch, whatever the path."""
    encoder = resnet18()
    if not pretrained:
        return encoder
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise UserError(f"PRETRAINED_PATH={pretrained_path} does not exist: point it at a "
                                    "ResNet-18 state dict (e.g. torchvision's resnet18-f37072fd.pth).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state.get("state_dict", state))
    else:
        weights = ResNet18_Weights.IMAGENET1K_V1
        try:
            encoder.load_state_dict(weights.get_state_dict(progress=False))
        except Exception as error:  # urllib, SSL and hash errors all mean the same to the user.
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
            raise UserError(
                f"Could not download the ImageNet weights of ResNet-18 ({error}). Put {weights.url} at {cache}, "
                "or pass --pretrained_path=FILE with a local state dict, or train from scratch with "
                "--pretrained=False.") from error
    return encoder


def swiftnet_rn18(num_classes: int, pretrained: bool = False, pretrained_path: str = "") -> SwiftNet:
    return SwiftNet(num_classes, imagenet_encoder(pretrained, pretrained_path))
