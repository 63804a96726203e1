"""TEACHER_CHECKPOINT: student options are compared on one shared teacher instead of retraining it."""
import json

import pytest

import semisup_cam
from utils.checkpoint import load_checkpoint
from utils.errors import UserError


def test_a_given_teacher_is_used_not_retrained(scenes, tmp_path, main_args):
    semisup_cam.main(main_args(scenes, tmp_path / "first", teacher_epochs=2))
    teacher = tmp_path / "first" / "ckpt" / "teacher_best.pth.tar"
    second = tmp_path / "second"
    semisup_cam.main(main_args(scenes, second, teacher_checkpoint=teacher, no_iter=1, pseudo_epochs=1,
                               finetune_epochs=1, pseudo_root=tmp_path / "pseudo", pictures=0))

    progress = json.loads((second / "run" / "progress.json").read_text())["phases"]
    assert "teacher" not in progress and {"it1_pseudo", "it1_finetune"} <= set(progress)
    assert not (second / "ckpt" / "teacher_best.pth.tar").exists()
    summary = json.loads((second / "run" / "summary.json").read_text())
    first = json.loads((tmp_path / "first" / "run" / "summary.json").read_text())
    assert summary["teacher"]["val_miou"] == pytest.approx(load_checkpoint(teacher)["val_iou"])
    assert summary["teacher"]["test_miou"] == pytest.approx(first["teacher"]["test_miou"])
    assert summary["iterations"][0]["teacher"] == "teacher"


def test_a_missing_teacher_checkpoint_is_a_user_error(scenes, tmp_path, main_args):
    with pytest.raises(UserError, match="missing.pth.tar"):
        semisup_cam.main(main_args(scenes, tmp_path, teacher_checkpoint=tmp_path / "missing.pth.tar", no_iter=1))
