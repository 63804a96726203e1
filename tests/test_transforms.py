"""Batched augmentation: geometry keeps images and labels aligned, randomness is seeded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from data.transforms import cutmix, cutout, photometric, scale_crop_flip, translate_flip

MEAN = (111.376, 63.110, 83.670)
IGNORE = 11
# One distinct colour per label 0..10, far from each other and from the mean colour.
PALETTE = torch.tensor([[20 * k + 10, 250 - 20 * k, (97 * k) % 256] for k in range(11)], dtype=torch.float32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_labels(batch: int, height: int, width: int, block: int, seed: int) -> torch.Tensor:
    grid = torch.randint(0, 11, (batch, height // block + 1, width // block + 1), generator=gen(seed))
    return grid.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width]


def paint(labels: torch.Tensor) -> torch.Tensor:
    """uint8 images whose colour is the palette colour of the label."""
    return PALETTE[labels].permute(0, 3, 1, 2).round().to(torch.uint8)


def uniform_neighbourhood(labels: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds one label (not ignore); the border is left out."""
    x = labels.float().unsqueeze(1)
    high = F.max_pool2d(x, 3, stride=1, padding=1)
    low = -F.max_pool2d(-x, 3, stride=1, padding=1)
    inner = torch.zeros_like(labels, dtype=torch.bool)
    inner[:, 1:-1, 1:-1] = True
    return (high == low).squeeze(1) & inner & (labels != IGNORE)


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


# ----------------------------------------------------------------------------- scale_crop_flip

def test_scale_crop_flip_keeps_images_and_labels_aligned() -> None:
    labels = block_labels(4, 40, 56, block=5, seed=0)
    images = paint(labels)
    checked = 0
    for seed in range(12):
        out_images, out_labels = scale_crop_flip(images, labels, 32, MEAN, IGNORE, gen(seed))
        keep = uniform_neighbourhood(out_labels)
        colours = out_images.permute(0, 2, 3, 1)[keep]
        expected = PALETTE[out_labels[keep]]
        torch.testing.assert_close(colours, expected, atol=1e-3, rtol=0)
        checked += int(keep.sum())
    assert checked > 12 * 4 * 32 * 32 // 4  # most pixels of most crops were checked


def test_scale_crop_flip_shapes_and_dtypes() -> None:
    labels = block_labels(3, 30, 40, block=4, seed=1)
    out_images, out_labels = scale_crop_flip(paint(labels), labels.to(torch.uint8), 24, MEAN, IGNORE, gen(0))
    assert out_images.shape == (3, 3, 24, 24) and out_images.dtype == torch.float32
    assert out_labels.shape == (3, 24, 24) and out_labels.dtype == torch.int64
    # Subtracting and adding the mean back costs a few ulps, no more.
    assert -1e-3 <= out_images.min() and out_images.max() <= 255 + 1e-3
    assert set(out_labels.unique().tolist()) <= set(range(12))


def test_scale_crop_flip_is_determined_by_the_generator_seed() -> None:
    labels = block_labels(4, 40, 40, block=4, seed=2)
    images = paint(labels)
    first = scale_crop_flip(images, labels, 32, MEAN, IGNORE, gen(7))
    again = scale_crop_flip(images, labels, 32, MEAN, IGNORE, gen(7))
    other = scale_crop_flip(images, labels, 32, MEAN, IGNORE, gen(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_padding_is_the_mean_colour_and_ignore_label() -> None:
    labels = torch.full((4, 20, 20), 3)
    images = paint(labels)
    out_images, out_labels = scale_crop_flip(images, labels, 128, MEAN, IGNORE, gen(0), scale=(0.5, 0.5))
    mean = torch.tensor(MEAN).view(3, 1, 1)
    for image, label in zip(out_images, out_labels):
        top, bottom, left, right = bounding_box(label != IGNORE)
        assert 9 <= bottom - top + 1 <= 11 and 9 <= right - left + 1 <= 11  # the 20x20 image halved
        assert (label[label != IGNORE] == 3).all()
        far = torch.ones_like(label, dtype=torch.bool)
        far[max(0, top - 2) : bottom + 3, max(0, left - 2) : right + 3] = False
        assert (label[far] == IGNORE).all()
        assert torch.equal(image[:, far], mean.expand(3, 128, 128)[:, far])
        # Inside, the image keeps its own colour.
        torch.testing.assert_close(image[:, top + 2, left + 2], PALETTE[3], atol=1e-3, rtol=0)


def test_flip_mirrors_image_and_label_together() -> None:
    width = 16
    labels = (torch.arange(width) >= 5).long().expand(1, width, width).clone()
    images = torch.arange(width, dtype=torch.float32).mul(10).expand(1, 3, width, width).clone()
    images[:, 0] += 50  # avoid colours equal to the mean by accident
    orientations = set()
    for seed in range(24):
        # A square crop of the whole image at scale 1: only the flip can change it.
        out_images, out_labels = scale_crop_flip(images, labels, width, MEAN, IGNORE, gen(seed), scale=(1.0, 1.0))
        row_image, row_label = out_images[0, :, 4], out_labels[0, 4]
        if torch.allclose(row_image, images[0, :, 4], atol=1e-3):
            assert torch.equal(row_label, labels[0, 4])
            orientations.add("kept")
        else:
            torch.testing.assert_close(row_image, images[0, :, 4].flip(-1), atol=1e-3, rtol=0)
            assert torch.equal(row_label, labels[0, 4].flip(-1))
            orientations.add("mirrored")
    assert orientations == {"kept", "mirrored"}


def test_no_flip_when_flip_is_off() -> None:
    width = 16
    labels = torch.zeros(8, width, width, dtype=torch.long)
    images = torch.arange(width, dtype=torch.float32).mul(10).expand(8, 3, width, width).clone()
    for seed in range(4):
        out_images, _ = scale_crop_flip(images, labels, width, MEAN, IGNORE, gen(seed), scale=(1.0, 1.0), flip=False)
        torch.testing.assert_close(out_images, images, atol=1e-3, rtol=0)


def square_side(scale: tuple[float, float], seeds: range) -> list[float]:
    """Apparent side of a 16-pixel square in 64x64 images after scale_crop_flip with a 128 crop."""
    labels = torch.zeros(8, 64, 64, dtype=torch.long)
    labels[:, 24:40, 24:40] = 1
    sides = []
    for seed in seeds:
        _, out = scale_crop_flip(paint(labels), labels, 128, MEAN, IGNORE, gen(seed), scale=scale)
        for label in out:
            top, bottom, left, right = bounding_box(label == 1)
            assert abs((bottom - top) - (right - left)) <= 1  # the same scale in both directions
            sides.append((right - left + 1) / 16)
    return sides


def test_scale_stays_in_the_requested_range() -> None:
    scales = square_side((0.5, 2.0), range(6))
    tolerance = 1.5 / 16  # a side is measured to within a pixel or so
    assert min(scales) >= 0.5 - tolerance and max(scales) <= 2.0 + tolerance
    assert min(scales) < 0.9 and max(scales) > 1.5  # and the range is actually used


def test_a_fixed_scale_resizes_by_that_factor() -> None:
    assert square_side((1.5, 1.5), range(1)) == pytest.approx([1.5] * 8, abs=1.5 / 16)


# ----------------------------------------------------------------------------- translate_flip

def test_translate_flip_shapes_and_determinism() -> None:
    images = torch.rand(6, 3, 32, 32, generator=gen(0)) * 255
    first = translate_flip(images, 4, gen(1))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, translate_flip(images, 4, gen(1)))
    assert not torch.equal(first, translate_flip(images, 4, gen(2)))


def test_translate_flip_is_a_shifted_possibly_mirrored_copy() -> None:
    pad = 3
    images = torch.rand(8, 3, 12, 12, generator=gen(0)) * 254 + 1  # no zeros: padding is recognisable
    out = translate_flip(images, pad, gen(5))
    padded = F.pad(images, (pad,) * 4)
    found = []
    for b in range(len(images)):
        matches = [(dy, dx, mirrored) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   for mirrored in (False, True)
                   if torch.equal(out[b], (lambda c: c.flip(-1) if mirrored else c)(
                       padded[b, :, dy : dy + 12, dx : dx + 12]))]
        assert matches, f"sample {b} is not a shifted crop"
        found.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 1


# ----------------------------------------------------------------------------- photometric

def test_photometric_keeps_shape_and_range_and_changes_colours() -> None:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen(0))
    out = photometric(images, gen(1))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    assert not torch.allclose(out, images.float())
    assert torch.equal(out, photometric(images, gen(1)))


def test_photometric_at_strength_zero_leaves_a_uniform_grey_image_alone() -> None:
    # No jitter at strength 0; greyscale and blur do not change a uniform grey image.
    images = torch.full((8, 3, 10, 10), 77.0)
    torch.testing.assert_close(photometric(images, gen(2), strength=0.0), images, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- cutmix, cutout

def test_cutmix_pastes_image_and_label_from_the_same_partner_pixel() -> None:
    b, h, w = 6, 20, 24
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # Channel 0 names the sample, channels 1-2 the pixel: every pixel's origin is readable.
    images = torch.stack([torch.stack([torch.full((h, w), 10 * i), ys, xs]) for i in range(b)]).float()
    labels = torch.stack([(i + ys // 3 + xs // 4) % 11 for i in range(b)])
    mixed_samples = 0
    for seed in range(4):
        out_images, out_labels = cutmix(images, labels, gen(seed), p=1.0)
        source = (out_images[:, 0] / 10).round().long()
        assert torch.equal(out_images[:, 1], images[:, 1]) and torch.equal(out_images[:, 2], images[:, 2])
        assert torch.equal(out_labels, labels[source, ys, xs])
        for i in range(b):
            pasted = source[i] != i
            if pasted.any():
                mixed_samples += 1
                assert source[i][pasted].unique().numel() == 1  # one partner per sample
                top, bottom, left, right = bounding_box(pasted)
                assert pasted[top : bottom + 1, left : right + 1].all()  # a box
                assert 0.1 * h * w <= pasted.sum() <= 0.6 * h * w  # 25-50% of the image, give or take a row
    assert mixed_samples > 0


def test_cutmix_with_p_zero_changes_nothing() -> None:
    images = torch.rand(4, 3, 8, 8, generator=gen(0))
    labels = torch.randint(0, 11, (4, 8, 8), generator=gen(1))
    out_images, out_labels = cutmix(images, labels, gen(2), p=0.0)
    assert torch.equal(out_images, images) and torch.equal(out_labels, labels)


def test_cutout_fills_one_square_with_the_fill_colour() -> None:
    size, fill = 6, (1.0, 2.0, 3.0)
    images = torch.rand(16, 3, 20, 20, generator=gen(0)) * 200 + 10
    out = cutout(images, size, gen(1), fill)
    fill_t = torch.tensor(fill).view(3, 1, 1)
    full_squares = 0
    for before, after in zip(images, out):
        filled = (after == fill_t).all(0)
        assert filled.any()
        top, bottom, left, right = bounding_box(filled)
        assert filled[top : bottom + 1, left : right + 1].all()
        assert bottom - top + 1 <= size and right - left + 1 <= size
        assert torch.equal(after[:, ~filled], before[:, ~filled])
        full_squares += int(filled.sum()) == size * size
    assert full_squares > 0  # squares clipped by the border are allowed, but not all are clipped


# ----------------------------------------------------------------------------- strong views of the online students

def pil_images(count: int, seed: int, size: int = 32) -> tuple[torch.Tensor, list]:
    """uint8 images as a float tensor (B,3,H,W) and as PIL images: smooth gradients plus noise, not flat."""
    from PIL import Image
    g = gen(seed)
    ramp = torch.linspace(0, 1, size)
    base = torch.rand(count, 3, 1, 1, generator=g) * 120 + 60 * ramp[None, None, :, None] + 60 * ramp[None, None, None]
    images = (base + torch.rand(count, 3, size, size, generator=g) * 60).clamp(0, 255).round()
    return images, [Image.fromarray(i.permute(1, 2, 0).to(torch.uint8).numpy()) for i in images]


def as_tensor(picture: "PIL.Image.Image") -> torch.Tensor:  # noqa: F821
    import numpy as np
    return torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).float()


def test_randaugments_colour_operations_equal_pils() -> None:
    from PIL import ImageEnhance, ImageOps

    from data.transforms import _auto_contrast, _blend, _equalize, _pil_grey, _smooth
    images, pictures = pil_images(6, 0)
    factor = torch.full((6,), 0.41)
    ours = {"autocontrast": _auto_contrast(images), "equalize": _equalize(images),
            "brightness": _blend(torch.zeros_like(images), images, factor).floor(),
            "colour": _blend(_pil_grey(images).round().expand_as(images), images, factor).floor(),
            "contrast": _blend(_pil_grey(images).round().mean((1, 2, 3), keepdim=True).round().expand_as(images),
                               images, factor).floor(),
            "sharpness": _blend(_smooth(images), images, factor).floor()}
    theirs = {"autocontrast": [ImageOps.autocontrast(p) for p in pictures],
              "equalize": [ImageOps.equalize(p) for p in pictures],
              "brightness": [ImageEnhance.Brightness(p).enhance(0.41) for p in pictures],
              "colour": [ImageEnhance.Color(p).enhance(0.41) for p in pictures],
              "contrast": [ImageEnhance.Contrast(p).enhance(0.41) for p in pictures],
              "sharpness": [ImageEnhance.Sharpness(p).enhance(0.41) for p in pictures]}
    for name, mine in ours.items():
        reference = torch.stack([as_tensor(p) for p in theirs[name]])
        assert (mine - reference).abs().max() <= 1, name  # PIL rounds some sums, we floor them
        assert (mine == reference).float().mean() > 0.9, name


def test_rand_augment_keeps_integer_levels_and_repeats_with_its_seed() -> None:
    from data.transforms import rand_augment
    images, _ = pil_images(64, 1)
    out = rand_augment(images, gen(3))
    assert torch.equal(out, rand_augment(images, gen(3))) and not torch.equal(out, rand_augment(images, gen(4)))
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255
    changed = (out != images).flatten(1).any(1).float().mean()
    assert 0.5 < changed < 0.95  # each of two draws applies with probability 0.5, identity among them


def test_fixmatchs_cutout_keeps_its_square_whole_inside_at_the_top_left() -> None:
    images = torch.zeros(400, 3, 32, 32)
    out = cutout(images, 16, gen(0), (127.0, 127.0, 127.0), inside=True)
    area = (out[:, 0] == 127).flatten(1).sum(1)
    rows, cols = (out[:, 0] == 127).any(2).float().argmax(1), (out[:, 0] == 127).any(1).float().argmax(1)
    assert torch.equal(area[(rows < 16) & (cols < 16)], torch.full_like(area[(rows < 16) & (cols < 16)], 256))
    assert area.max() == 256 and area.min() >= 1


def test_colour_jitter_equals_torchvisions_operations_in_each_samples_order() -> None:
    import torchvision.transforms.v2.functional as TF

    from data.transforms import colour_jitter
    images, _ = pil_images(8, 2)
    out = colour_jitter(images, gen(5), p=1.0)
    g = gen(5)  # the draws of colour_jitter, in its order
    torch.rand(8, generator=g)
    factors = [0.5 + torch.rand(8, generator=g) for _ in range(3)] + [-0.25 + 0.5 * torch.rand(8, generator=g)]
    order = torch.rand(8, 4, generator=g).argsort(1)
    operations = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(8):
        x = images[i] / 255
        for kind in order[i].tolist():
            x = operations[kind](x, factors[kind][i].item())
        torch.testing.assert_close(out[i] / 255, x, atol=2e-4, rtol=0)


def test_gaussian_blur_equals_torchvisions() -> None:
    import torchvision.transforms.v2.functional as TF

    from data.transforms import gaussian_blur
    images, _ = pil_images(3, 4)
    for sigma in (0.3, 1.2, 2.0):
        out = gaussian_blur(images, gen(0), sigma=(sigma, sigma), p=1.0)
        torch.testing.assert_close(out, TF.gaussian_blur(images, [13, 13], [sigma, sigma]), atol=0.01, rtol=0)
    assert torch.equal(gaussian_blur(images, gen(0), p=0.0), images)
