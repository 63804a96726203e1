"""The fast paths (batched augmentation, batched evaluation) against the slow ones they replace."""
import numpy as np
import pytest
import torch

from bench.speed import PilPipeline, make_dataset
from data.camvid import IGNORE_INDEX, LOOKUP, NUM_CLASSES, STATISTICS
from data.segmentation import load_images, load_labels
from data.transforms import scale_crop_flip
from models.swiftnet import swiftnet_rn18
from utils.dist import Runtime
from utils.engine import evaluate, slices
from utils.metrics import ConfusionMatrix

CAMVID_MEAN, CAMVID_STD = STATISTICS["camvid"]

CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    image_paths, label_paths = make_dataset(tmp_path_factory.mktemp("scenes"), 6, (80, 60))
    return image_paths, label_paths, load_images(image_paths), load_labels(label_paths, LOOKUP)


def test_batched_and_per_sample_augmentation_give_the_same_kind_of_batch(scenes):
    image_paths, label_paths, images, labels = scenes
    crop = 64
    pil_images, pil_labels = PilPipeline(image_paths, label_paths, crop).batch(list(range(6)))
    pil_images = pil_images * torch.tensor(CAMVID_STD).view(1, 3, 1, 1) + torch.tensor(CAMVID_MEAN).view(1, 3, 1, 1)
    ours_images, ours_labels = scale_crop_flip(images, labels, crop, CAMVID_MEAN, IGNORE_INDEX,
                                               torch.Generator().manual_seed(0))
    assert ours_images.shape == pil_images.shape == (6, 3, crop, crop)
    assert ours_labels.shape == pil_labels.shape == (6, crop, crop)
    assert ours_labels.dtype == pil_labels.dtype == torch.int64
    allowed = set(labels.unique().tolist()) | {IGNORE_INDEX}
    assert set(ours_labels.unique().tolist()) <= allowed
    assert set(pil_labels.unique().tolist()) <= allowed
    for batch in (ours_images, pil_images):
        assert batch.min() >= -1e-3 and batch.max() <= 255 + 1e-3


def test_batched_and_per_sample_augmentation_draw_the_same_label_distribution(scenes):
    """The speed benchmark compares like with like: over many crops both pipelines see each class, and
    the padding (ignore) of crops scaled below the crop size, in the same proportions."""
    image_paths, label_paths, images, labels = scenes
    crop, index = 64, list(range(6)) * 40

    def shares(batch_labels: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(batch_labels.flatten(), minlength=IGNORE_INDEX + 1).double()
        return counts / counts.sum()

    pil = shares(PilPipeline(image_paths, label_paths, crop).batch(index)[1])
    ours = shares(scale_crop_flip(images[index], labels[index], crop, CAMVID_MEAN, IGNORE_INDEX,
                                  torch.Generator().manual_seed(0))[1])
    assert 0.05 < pil[IGNORE_INDEX] < 0.3  # the scale range does pad some crops
    assert abs(ours[IGNORE_INDEX] - pil[IGNORE_INDEX]) < 0.04
    assert (ours - pil).abs().sum() < 0.12


def test_batched_evaluation_equals_per_image_evaluation(scenes):
    _, _, images, labels = scenes
    torch.manual_seed(0)
    model = swiftnet_rn18(NUM_CLASSES, *STATISTICS["camvid"]).eval()
    batched = evaluate(model, slices(images, labels, 4), NUM_CLASSES, CPU)
    one_by_one = ConfusionMatrix(NUM_CLASSES)
    with torch.no_grad():
        for image, label in zip(images, labels):
            one_by_one.update(label, model(image[None]).argmax(1))
    assert torch.equal(batched.mat, one_by_one.mat)
    assert batched.miou() == one_by_one.miou() or np.isnan(batched.miou())
