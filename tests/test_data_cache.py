"""DATA_CACHE: decoded sets kept as memory-mapped files, decoded once, made again when the files change."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch

import data.segmentation as segmentation
import semisup_cam
from data.camvid import LOOKUP, files
from data.datasets import load_subset


def test_a_cached_set_equals_the_decoded_one_and_is_decoded_once(tiny_scenes: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = load_subset("camvid", tiny_scenes, "train")
    first = load_subset("camvid", tiny_scenes, "train", cache=tmp_path)
    assert torch.equal(first.images, decoded.images) and torch.equal(first.labels, decoded.labels)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".json", ".lock", ".lock", ".uint8", ".uint8"]
    calls = []
    decode = segmentation.decode_image
    monkeypatch.setattr(segmentation, "decode_image", lambda *args: calls.append(args) or decode(*args))
    again = load_subset("camvid", tiny_scenes, "train", cache=tmp_path)
    assert not calls  # the headers give the sizes: nothing is decoded
    assert torch.equal(again.images, decoded.images) and torch.equal(again.labels, decoded.labels)
    again.images[0] += 1  # copy-on-write: the file keeps what was decoded
    assert torch.equal(load_subset("camvid", tiny_scenes, "train", cache=tmp_path).images, decoded.images)


def test_a_changed_file_or_scale_makes_a_new_cache_file(scenes: Path, tmp_path: Path) -> None:
    load_subset("camvid", scenes, "val", cache=tmp_path)
    load_subset("camvid", scenes, "val", scale=0.5, cache=tmp_path)
    assert len(list(tmp_path.glob("*.uint8"))) == 4
    image = files(scenes, "val")[0][0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    load_subset("camvid", scenes, "val", cache=tmp_path)
    assert len(list(tmp_path.glob("*.uint8"))) == 5  # the images again; the labels did not change


def test_a_run_resumes_with_another_cache_folder(tiny_scenes: Path, tmp_path: Path,
                                                main_args: Callable[..., list[str]]) -> None:
    semisup_cam.main(main_args(tiny_scenes, tmp_path, data_cache=tmp_path / "cache_a"))
    summary = (tmp_path / "run" / "summary.json").read_text()
    semisup_cam.main(main_args(tiny_scenes, tmp_path, data_cache=tmp_path / "cache_b"))  # no "another config"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["teacher"] == json.loads(summary)["teacher"]


def test_a_decode_cut_short_is_made_again(tiny_scenes: Path, tmp_path: Path) -> None:
    load_subset("camvid", tiny_scenes, "val", cache=tmp_path)
    for path in tmp_path.glob("*.uint8"):
        path.rename(path.with_suffix(".partial"))  # what a killed decode leaves
    again = load_subset("camvid", tiny_scenes, "val", cache=tmp_path)
    assert torch.equal(again.labels, segmentation.load_labels(files(tiny_scenes, "val")[1], LOOKUP))
    assert not list(tmp_path.glob("*.partial"))
