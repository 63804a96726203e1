"""The data sets `--dataset` names, one module each with the same few names: TITLE, classes(root, normalization)
(the class table and the lookup of label values), files(root, subset) ('train', 'val', 'test'; None where the data
set has no such subset and VAL_SIZE images are held out instead), frames(root) (unlabeled images), name_of(path)
and LABEL_HINT. A new data set is a module and a line here."""
from __future__ import annotations

from pathlib import Path

from data import camvid, cityscapes, folder, pascal
from data.segmentation import SegmentationSet, load_set

DATASETS = {"camvid": camvid, "cityscapes": cityscapes, "folder": folder, "pascal": pascal}


def load_subset(name: str, root: str | Path, subset: str, scale: float = 1.0, cache: Path | None = None,
                max_side: int = 0, normalization: str = "dataset") -> SegmentationSet | None:
    """A labeled subset ('train', 'val', 'test') of data set `name`, decoded; None where it has no such subset."""
    dataset = DATASETS[name]
    paths = dataset.files(Path(root), subset)
    if paths is None:
        return None
    lookup = dataset.classes(Path(root), normalization)[1]
    return load_set(*paths, lookup, scale, max_side, dataset.LABEL_HINT, [dataset.name_of(p) for p in paths[0]],
                    cache)


def load_frames(name: str, root: str | Path, scale: float = 1.0, limit: int = 0, cache: Path | None = None,
                max_side: int = 0) -> SegmentationSet:
    """The unlabeled frames of data set `name` (the first `limit` by name when above 0), decoded."""
    paths = DATASETS[name].frames(Path(root))[: limit or None]
    return load_set(paths, None, None, scale, max_side, cache=cache)
