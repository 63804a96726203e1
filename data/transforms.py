"""Batched augmentation on whatever device the batch lives on.

Each function takes a batch of images in [0, 255] (B,3,H,W) and, where there are any, labels (B,H,W). Per-sample
randomness comes from a CPU `torch.Generator`, so that runs are reproducible and resumable on any device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def scale_crop_flip(images: torch.Tensor, labels: torch.Tensor, crop: int, mean: Sequence[float],
                    ignore_index: int, generator: torch.Generator, scale: tuple[float, float] = (0.5, 2.0),
                    flip: bool = True, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale in `scale`, random square `crop` of the scaled image, random horizontal flip.

    Where the crop leaves the scaled image, images get the `mean` colour and labels `ignore_index`. Image and
    label are sampled on one grid (bilinear and nearest), so they never drift apart. `sizes` (B,2), the height
    and width of each image in a batch padded at the bottom and right to one size, crops each within its own.
    Returns float images (B,3,crop,crop) in [0, 255] and int64 labels (B,crop,crop).
    """
    b, _, h, w = images.shape
    if sizes is not None:  # each image its own size: heights and widths per sample
        height, width = sizes[:, 0].float(), sizes[:, 1].float()
    else:
        height, width = h, w
    s = _uniform(b, *scale, generator)
    # Offsets of the crop inside the scaled image; negative when the scaled image is the smaller.
    ox = (s * width - crop) * torch.rand(b, generator=generator)
    oy = (s * height - crop) * torch.rand(b, generator=generator)
    mirror = _coin(b, 0.5 if flip else 0.0, generator)
    device = images.device
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    if sizes is None:
        sign = torch.where(mirror, -1.0, 1.0)
        # Output coordinate u (normalised, align_corners=False) maps to input x = (u_pixels + ox) / s.
        # The map is axis-aligned, so the sampling grid is an outer sum of two 1-D coordinate vectors:
        # cheaper than affine_grid's matrix product over every pixel.
        u = ((torch.arange(crop, device=device) + 0.5) * 2 / crop - 1)[None]
        gx = ((sign * crop / (s * w)).to(device)[:, None] * u
              + (sign * ((crop + 2 * ox) / (s * w) - 1)).to(device)[:, None])
        gy = (crop / (s * h)).to(device)[:, None] * u + ((crop + 2 * oy) / (s * h) - 1).to(device)[:, None]
    else:
        # In input pixels: output pixel k samples x = (k + 0.5 + ox) / s, mirrored within the image's own width.
        centres = torch.arange(crop) + 0.5
        x = (centres[None] + ox[:, None]) / s[:, None]
        x = torch.where(mirror[:, None], width[:, None] - x, x)
        y = (centres[None] + oy[:, None]) / s[:, None]
        inside = (((x >= 0) & (x < width[:, None]))[:, None, :] & ((y >= 0) & (y < height[:, None]))[:, :, None])
        gx, gy = (2 * x / w - 1).to(device), (2 * y / h - 1).to(device)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    out_images = F.grid_sample(images.float() - mean_t, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False) + mean_t
    # Shift labels by one so that the zero padding of grid_sample becomes -1, then ignore.
    shifted = (labels.float() + 1).unsqueeze(1)
    out_labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_labels = out_labels.squeeze(1).long() - 1
    out_labels = torch.where(out_labels < 0, ignore_index, out_labels)
    if sizes is not None:  # what lies beyond an image's own size, in the batch's padding, is outside too
        inside = inside.to(device)
        out_images = torch.where(inside[:, None], out_images, mean_t)
        out_labels = torch.where(inside, out_labels, ignore_index)
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


def cutout(images: torch.Tensor, size: int, generator: torch.Generator, fill: Sequence[float],
           inside: bool = False) -> torch.Tensor:
    """Fills one random `size`x`size` square per sample with `fill`: centred on a random pixel and cut by the border
    (DeVries & Taylor, 2017), or with `inside` moved inside at the top and left borders (FixMatch's CutoutAbs)."""
    b, _, h, w = images.shape
    y0 = torch.randint(0, h, (b,), generator=generator) - size // 2
    x0 = torch.randint(0, w, (b,), generator=generator) - size // 2
    if inside:
        y0, x0 = y0.clamp(min=0), x0.clamp(min=0)
    rows, cols = torch.arange(h)[None, :], torch.arange(w)[None, :]
    in_y = (rows >= y0[:, None]) & (rows < (y0 + size)[:, None])
    in_x = (cols >= x0[:, None]) & (cols < (x0 + size)[:, None])
    box = (in_y[:, :, None] & in_x[:, None, :]).to(images.device)[:, None]
    fill_t = torch.tensor(fill, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
    return torch.where(box, fill_t, images.float())


# ----------------------------------------------------------------------------- FixMatch's strong view (CIFAR)

def _blend(degenerate: torch.Tensor, images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: `factor` 0 gives `degenerate`, 1 the image; clamped to [0, 255]."""
    factor = factor.view(-1, 1, 1, 1)
    return (degenerate + factor * (images - degenerate)).clamp(0, 255)


def _pil_grey(images: torch.Tensor) -> torch.Tensor:
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)


def _auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to [0, 255] (PIL's autocontrast, no cutoff); a flat channel is left alone."""
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    scale = 255 / (high - low).clamp(min=1)
    return torch.where(high > low, ((x - low) * scale).floor().clamp(0, 255), x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's equalize: per channel, values mapped through the cumulative histogram in steps of
    (pixels - the last value's count) / 255; a channel of one value, or too few pixels, is left alone."""
    b, c, h, w = x.shape
    values = x.round().long().reshape(b * c, h * w)
    histogram = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, values,
                                                                                       torch.ones_like(values))
    last = (histogram > 0).long().cumsum(1).argmax(1)  # the highest value present
    step = (h * w - histogram.gather(1, last[:, None]).squeeze(1)) // 255
    before = histogram.cumsum(1) - histogram  # pixels below each value
    lut = ((step[:, None] // 2 + before) // step.clamp(min=1)[:, None]).clamp(max=255)
    mapped = lut.gather(1, values).reshape(b, c, h, w).float()
    return torch.where((step > 0).view(b, c, 1, 1), mapped, x)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre 5 of 13), the border pixels kept: ImageEnhance.Sharpness's degenerate."""
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device) / 13
    inner = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), kernel[None, None]).reshape(*x.shape[:2], *(n - 2 for n in
                                                                                                 x.shape[2:]))
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner.round()
    return out


def rand_augment(images: torch.Tensor, generator: torch.Generator, ops: int = 2) -> torch.Tensor:
    """FixMatch's RandAugment restricted to its colour operations: `ops` draws from autocontrast, brightness,
    colour, contrast, equalize, identity, posterize, sharpness and solarize, each applied with probability 0.5 at
    a magnitude of 1..9 of 10 (the enhancements' factors 0.05 + 0.09 m, posterize to 4 + 0.4 m bits, solarize
    above 256 - 25.6 m), on integer levels as PIL computes them."""
    x = images.float().round()
    b = x.shape[0]
    for _ in range(ops):
        kind = torch.randint(0, 9, (b,), generator=generator)
        level = torch.randint(1, 10, (b,), generator=generator).float()
        kind = torch.where(_coin(b, 0.5, generator), kind, 5)  # not applied: identity
        for k in (0, 1, 2, 3, 4, 6, 7, 8):
            chosen = (kind == k).nonzero().squeeze(1)
            if not len(chosen):
                continue
            y, m = x[chosen.to(x.device)], level[chosen].to(x.device)
            factor = 0.05 + m * 0.9 / 10
            if k == 0:
                y = _auto_contrast(y)
            elif k == 1:
                y = _blend(torch.zeros_like(y), y, factor)
            elif k == 2:
                y = _blend(_pil_grey(y).round().expand_as(y), y, factor)
            elif k == 3:
                y = _blend(_pil_grey(y).round().mean((1, 2, 3), keepdim=True).round().expand_as(y), y, factor)
            elif k == 4:
                y = _equalize(y)
            elif k == 6:
                quantum = (2 ** (8 - (4 + (m * 4 / 10).floor()))).view(-1, 1, 1, 1)
                y = (y / quantum).floor() * quantum
            elif k == 7:
                y = _blend(_smooth(y), y, factor)
            else:
                threshold = (256 - (m * 256 / 10).floor()).view(-1, 1, 1, 1)
                y = torch.where(y >= threshold, 255 - y, y)
            x[chosen.to(x.device)] = y.floor()
    return x


# ----------------------------------------------------------------------------- UniMatch's strong view (segmentation)

def _grey(images: torch.Tensor) -> torch.Tensor:
    """Luma (B,1,H,W) with torchvision's weights."""
    return (0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates each sample's hue by `shift` (a share of the colour circle, per sample), keeping value and saturation."""
    x = images / 255
    value, brightest = x.max(1)
    darkest = x.min(1).values
    chroma = value - darkest
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = x.unbind(1)
    hue = torch.where(brightest == 0, ((g - b) / safe) % 6, torch.where(brightest == 1, (b - r) / safe + 2,
                                                                         (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    # Back to RGB: each channel is value minus chroma times how far the hue lies inside its ramp.
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + hue.unsqueeze(1) * 6) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return (value.unsqueeze(1) - chroma.unsqueeze(1) * ramp) * 255


def colour_jitter(images: torch.Tensor, generator: torch.Generator, strength: float = 0.5, hue: float = 0.25,
                  p: float = 0.8) -> torch.Tensor:
    """torchvision's ColorJitter(strength, strength, strength, hue) on a share `p` of the samples: brightness,
    contrast and saturation factors in [1 - strength, 1 + strength] and a hue shift in [-hue, hue], each sample
    applying the four in an order of its own, clamped to [0, 255] after each."""
    x = images.float().clone()
    b = x.shape[0]
    jitter = _coin(b, p, generator)
    factors = [_uniform(b, 1 - strength, 1 + strength, generator) for _ in range(3)] + [_uniform(b, -hue, hue,
                                                                                                generator)]
    order = torch.rand(b, 4, generator=generator).argsort(1)
    operations = [lambda y, f: y * f.view(-1, 1, 1, 1),
                  lambda y, f: f.view(-1, 1, 1, 1) * y + (1 - f.view(-1, 1, 1, 1)) * _grey(y).mean((1, 2, 3),
                                                                                                  keepdim=True),
                  lambda y, f: f.view(-1, 1, 1, 1) * y + (1 - f.view(-1, 1, 1, 1)) * _grey(y),
                  _shift_hue]
    for position in range(4):
        for kind, operation in enumerate(operations):
            chosen = (jitter & (order[:, position] == kind)).nonzero().squeeze(1)
            if len(chosen):
                x[chosen.to(x.device)] = operation(x[chosen.to(x.device)],
                                                   factors[kind][chosen].to(x.device)).clamp(0, 255)
    return x


def gaussian_blur(images: torch.Tensor, generator: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0),
                  p: float = 0.5) -> torch.Tensor:
    """A Gaussian blur of a standard deviation drawn in `sigma` per sample, on a share `p` of the samples
    (UniMatch's PIL GaussianBlur); borders reflected."""
    x = images.float().clone()
    chosen = _coin(x.shape[0], p, generator).nonzero().squeeze(1)
    sigmas = _uniform(len(chosen), *sigma, generator)
    if not len(chosen):
        return x
    radius = math.ceil(3 * sigma[1])
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-taps[None] ** 2 / (2 * sigmas[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(3, 0).to(x.device)  # (n*3, taps)
    picked = x[chosen.to(x.device)]
    n, c, h, w = picked.shape
    flat = picked.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None], groups=n * c)
    x[chosen.to(x.device)] = flat.reshape(n, c, h, w)
    return x


def strong_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """UniMatch's strong view of a crop: colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5)."""
    x = colour_jitter(images, generator)
    grey = _coin(x.shape[0], 0.2, generator).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(grey, (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x), x)
    return gaussian_blur(x, generator)


def cutmix_box(count: int, height: int, width: int, generator: torch.Generator, p: float = 0.5,
               area: tuple[float, float] = (0.02, 0.4), ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """UniMatch's CutMix boxes (count,H,W) bool: in a share `p` of the samples a box of `area` (a share of the
    image) and aspect `ratio` (height / width), placed wholly inside; shape and place are drawn again until it fits."""
    wanted = _coin(count, p, generator)
    size = _uniform(count, *area, generator) * height * width
    placed = torch.zeros(count, 4, dtype=torch.long)  # y, x, h, w
    todo = wanted.clone()
    while todo.any():
        index = todo.nonzero().squeeze(1)
        aspect = _uniform(len(index), *ratio, generator)
        box_w = (size[index] / aspect).sqrt().long()
        box_h = (size[index] * aspect).sqrt().long()
        x = torch.randint(0, width, (len(index),), generator=generator)
        y = torch.randint(0, height, (len(index),), generator=generator)
        fits = (x + box_w <= width) & (y + box_h <= height)
        placed[index[fits]] = torch.stack([y, x, box_h, box_w], 1)[fits]
        todo[index[fits]] = False
    rows, cols = torch.arange(height)[None, :], torch.arange(width)[None, :]
    y, x, box_h, box_w = placed.unbind(1)
    inside_y = (rows >= y[:, None]) & (rows < (y + box_h)[:, None])
    inside_x = (cols >= x[:, None]) & (cols < (x + box_w)[:, None])
    return inside_y[:, :, None] & inside_x[:, None, :] & wanted.view(count, 1, 1)
