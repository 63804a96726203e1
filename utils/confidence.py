"""Which pseudo-labels to keep: a confidence threshold, lowered for the classes it would thin out.

A single threshold keeps what the teacher is sure of, and the teacher is rarely sure of rare,
thin classes: at 1/16 of CamVid's labels a threshold of 0.8 kept 0.09% SignSymbol pixels where
the ground truth has 1.21%, and no Column_Pole at all, so the student learned those classes
from the labeled crops alone. Class-balanced self-training (Zou et al., ECCV 2018) ranks
confidences within each predicted class instead; here that rank only ever lowers the threshold:
every class keeps at least `class_share` of the pixels (or images) predicted as it, and the
classes the global threshold already treats well keep exactly what it keeps.

Confidences are counted in a fixed number of bins, so the per-class cut-offs come from
histograms that add up across batches and processes, with no need to hold every confidence.
"""
from __future__ import annotations

import torch

BINS = 1000


def confidence_bins(confidence: torch.Tensor) -> torch.Tensor:
    """Bin index of each confidence in [0, 1]: floor(confidence * BINS), 1.0 in the top bin."""
    return (confidence * BINS).long().clamp_(0, BINS - 1)


def confidence_histogram(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, BINS) counts of the predictions per predicted class and confidence bin."""
    flat = labels.reshape(-1).long() * BINS + confidence_bins(confidence.reshape(-1))
    return torch.bincount(flat, minlength=num_classes * BINS).view(num_classes, BINS)


def class_cutoffs(histogram: torch.Tensor, class_share: float) -> torch.Tensor:
    """Per class, the highest bin such that that bin and those above hold at least `class_share` of its pixels.

    A class nobody predicted gets BINS, a cut-off no prediction reaches.
    """
    at_or_above = histogram.flip(1).cumsum(1).flip(1)
    total = histogram.sum(1, keepdim=True)
    enough = at_or_above >= class_share * total
    return torch.where(total.squeeze(1) > 0, enough.sum(1) - 1, BINS)


def keep_mask(confidence: torch.Tensor, labels: torch.Tensor, threshold: float,
              cutoffs: torch.Tensor | None = None) -> torch.Tensor:
    """True where the pseudo-label stays: confident enough, or among its class's `class_share` most confident."""
    keep = confidence >= threshold
    if cutoffs is not None:
        keep |= confidence_bins(confidence) >= cutoffs.to(labels.device)[labels.long()]
    return keep


def cutoff_confidences(cutoffs: torch.Tensor, threshold: float) -> list[float]:
    """The confidence each class actually needs: the lower of the global threshold and its cut-off bin's edge."""
    return [round(min(threshold, int(c) / BINS), 4) for c in cutoffs]


def image_reliability(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image of a (N, H, W) batch, the mean over its predicted classes of their mean confidence.

    ST++ (Yang et al., CVPR 2022) keeps whole images the teacher is reliable on instead of
    thresholding pixels, which leaves thin classes in the pseudo-labels. Each predicted class counts
    once, as in ST++'s mIoU-based stability, so an image is not called reliable for being mostly
    sky and road while its few pedestrians are guesses.
    """
    count = labels.shape[0]
    flat = labels.reshape(count, -1).long()
    sums = torch.zeros(count, num_classes, device=labels.device).scatter_add_(
        1, flat, confidence.reshape(count, -1).float())
    pixels = torch.zeros(count, num_classes, device=labels.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float))
    return (sums / pixels.clamp(min=1)).sum(1) / (pixels > 0).sum(1)


def most_reliable(scores: dict[str, float], share: float) -> set[str]:
    """The names of the `share` of images with the highest reliability (at least one), ties by name."""
    ranked = sorted(scores, key=lambda name: (-scores[name], name))
    return set(ranked[: max(1, round(share * len(ranked)))])
