"""The prepared GPU check: its estimate of the thesis protocol's wall time, and the compact CamVid copy
that travels with the working tree (the latter only when CAMVID_SEGNET_DIR points at the SegNet release)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.gpu_check import THESIS, thesis_hours

REPO = Path(__file__).resolve().parents[1]


def test_the_thesis_estimate_counts_every_crop_evaluation_and_pseudo_label() -> None:
    # Written out by hand: 30 steps of 12 on the 367 train images, 33 on the 406 frames.
    crops = 12 * (400 * 30 + 3 * (100 * 33 + 200 * 30))
    evaluated = (400 + 3 * (100 + 200)) // 10 * 101 + 4 * 233
    pseudo_labeled = 3 * 406
    assert THESIS["batch"] == 12 and (crops, evaluated, pseudo_labeled) == (478800, 14062, 1218)
    assert thesis_hours(crops, evaluated, pseudo_labeled) == pytest.approx(3 / 3600)  # one second each
    assert thesis_hours(crops / 2, evaluated, pseudo_labeled) == pytest.approx(4 / 3600)


@pytest.mark.skipif(not os.environ.get("CAMVID_SEGNET_DIR"), reason="set CAMVID_SEGNET_DIR to the SegNet release")
def test_the_compact_copy_keeps_every_label_and_fits_the_tree_limit(tmp_path: Path) -> None:
    segnet = Path(os.environ["CAMVID_SEGNET_DIR"])
    for tool, out in [("data/prepare_camvid.py", "full"), ("bench/compact_camvid.py", "small")]:
        subprocess.run([sys.executable, tool, "--segnet", str(segnet), "--out", str(tmp_path / out)],
                       cwd=REPO, check=True, capture_output=True)
    small = tmp_path / "small"
    assert sum(p.stat().st_size for p in small.rglob("*") if p.is_file()) < 48 * 2**20
    labels = sorted((tmp_path / "full").glob("*_labels/*.png"))
    assert len(labels) == 701 and len(list(small.glob("*/*.jpg"))) == 701
    for path in labels[::50]:
        relative = path.relative_to(tmp_path / "full")
        assert np.array_equal(np.asarray(Image.open(small / relative)), np.asarray(Image.open(path)))
        image = small / relative.parent.name.removesuffix("_labels") / relative.with_suffix(".jpg").name
        with Image.open(image) as jpg, Image.open(path) as label:
            assert jpg.size == label.size
