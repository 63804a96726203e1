"""Batched augmentation on whatever device the batch lives on.

Each function takes a batch of images in [0, 255] (B,3,H,W) and, where there are any, labels (B,H,W). Per-sample
randomness comes from a CPU `torch.Generator`, so that runs are reproducible and resumable on any device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def scale_crop_flip(images: torch.Tensor, labels: torch.Tensor, crop: int, mean: Sequence[float],
                    ignore_index: int, generator: torch.Generator,
                    scale: tuple[float, float] = (0.5, 2.0), flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale in `scale`, random square `crop` of the scaled image, random horizontal flip.

    Where the crop leaves the scaled image, images get the `mean` colour and labels `ignore_index`. Image and
    label are sampled on one grid (bilinear and nearest), so they never drift apart.
    Returns float images (B,3,crop,crop) in [0, 255] and int64 labels (B,crop,crop).
    """
    b, _, h, w = images.shape
    s = _uniform(b, *scale, generator)
    # Offsets of the crop inside the scaled image; negative when the scaled image is the smaller.
    ox = (s * w - crop) * torch.rand(b, generator=generator)
    oy = (s * h - crop) * torch.rand(b, generator=generator)
    sign = torch.where(_coin(b, 0.5 if flip else 0.0, generator), -1.0, 1.0)
    # Output coordinate u (normalised, align_corners=False) maps to input x = (u_pixels + ox) / s.
    # The map is axis-aligned, so the sampling grid is an outer sum of two 1-D coordinate vectors:
    # cheaper than affine_grid's matrix product over every pixel.
    device = images.device
    u = ((torch.arange(crop, device=device) + 0.5) * 2 / crop - 1)[None]
    gx = (sign * crop / (s * w)).to(device)[:, None] * u + (sign * ((crop + 2 * ox) / (s * w) - 1)).to(device)[:, None]
    gy = (crop / (s * h)).to(device)[:, None] * u + ((crop + 2 * oy) / (s * h) - 1).to(device)[:, None]
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    out_images = F.grid_sample(images.float() - mean_t, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) + mean_t
    # Shift labels by one so that the zero padding of grid_sample becomes -1, then ignore.
    shifted = (labels.float() + 1).unsqueeze(1)
    out_labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_labels = out_labels.squeeze(1).long() - 1
    out_labels = torch.where(out_labels < 0, ignore_index, out_labels)
    return out_images, out_labels


def translate_flip(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """CIFAR augmentation: zero-pad by `pad`, take a random crop of the original size, random flip."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
    flip = _coin(b, 0.5, generator).to(images.device)
    cols = torch.arange(w, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(0)[None], cols[None]) + ox[:, None]
    rows = torch.arange(h, device=images.device)[None] + oy[:, None]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def photometric(images: torch.Tensor, generator: torch.Generator, strength: float = 0.5) -> torch.Tensor:
    """Colour jitter (brightness, contrast, saturation), random grayscale and random blur, per sample.

    The strong augmentation that ST++/UniMatch apply to inputs of pseudo-labeled images only:
    labels are unchanged, so the student must predict the teacher's label from a harder view.
    """
    b = images.shape[0]
    x = images.float()
    dev = x.device
    view = (b, 1, 1, 1)
    jitter = _coin(b, 0.8, generator)
    factors = [torch.where(jitter, _uniform(b, 1 - strength, 1 + strength, generator), 1.0) for _ in range(3)]
    brightness, contrast, saturation = (factor.to(dev).view(view) for factor in factors)
    x = x * brightness
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - gray.mean((2, 3), keepdim=True)) * contrast + gray.mean((2, 3), keepdim=True)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = gray + (x - gray) * saturation
    x = torch.where(_coin(b, 0.2, generator).to(dev).view(view), gray.expand_as(x), x)  # to grayscale
    kernel = torch.full((3, 1, 5, 5), 1 / 25, device=dev, dtype=x.dtype)  # a 5x5 box blur
    blurred = F.conv2d(F.pad(x, [2] * 4, mode="replicate"), kernel, groups=3)
    x = torch.where(_coin(b, 0.5, generator).to(dev).view(view), blurred, x)
    return x.clamp(0, 255)


def cutmix(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
           p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Pastes a random box of another sample of the batch, with its labels, into a share `p` of samples.

    Works for segmentation labels (B,H,W) and for class distributions (B,C,H,W); the pasted box
    keeps image and label aligned.
    """
    b, _, h, w = images.shape
    partner = torch.randperm(b, generator=generator).to(images.device)
    share = _uniform(b, 0.25, 0.5, generator)  # of the image the box covers
    ratio = torch.exp(_uniform(b, -0.5, 0.5, generator))
    bh = (h * (share * ratio).sqrt()).clamp(max=h)
    bw = (w * (share / ratio).sqrt()).clamp(max=w)
    y0 = (h - bh) * torch.rand(b, generator=generator)
    x0 = (w - bw) * torch.rand(b, generator=generator)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    inside_y = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])
    inside_x = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])
    box = (inside_y[:, :, None] & inside_x[:, None, :]).to(images.device)
    box &= _coin(b, p, generator).to(images.device).view(b, 1, 1)
    images = torch.where(box[:, None], images[partner], images)
    labels = torch.where(box if labels.ndim == 3 else box[:, None], labels[partner], labels)
    return images, labels


def cutout(images: torch.Tensor, size: int, generator: torch.Generator, fill: Sequence[float]) -> torch.Tensor:
    """Fills one random `size`x`size` square per sample with `fill` (DeVries & Taylor, 2017)."""
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b,), generator=generator)
    cx = torch.randint(0, w, (b,), generator=generator)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_y = (rows >= (cy - size // 2)[:, None]) & (rows < (cy + size - size // 2)[:, None])
    in_x = (cols >= (cx - size // 2)[:, None]) & (cols < (cx + size - size // 2)[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :]).to(images.device)[:, None]
    fill_t = torch.tensor(fill, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return torch.where(box, fill_t, images.float())
