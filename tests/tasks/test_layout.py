"""A prepared data folder is checked when read: split lists of plain, disjoint names, never empty; the size
options of prepare are bounded."""

import json
import re

import numpy as np
import pytest

from dus_gym.tasks import make_task
from tests.helpers import prepared_root


def test_empty_clip_list(tmp_path):
    root = prepared_root(tmp_path, "clip,label\n", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="train.csv lists no clips"):
        make_task("cremad", root=str(root))


@pytest.mark.parametrize("train, message", [
    ("clip,label\nc0\n", "expected 'clip,label'"),
    ("clip,label\n../c0,NEU\n", "is not a plain file name"),
    ("clip,label\nc0,NEU\n", "in both the train and the test list"),
])
def test_prepared_split_lists_are_checked_by_the_task(train, message, tmp_path):
    root = prepared_root(tmp_path, train, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=message):
        make_task("cremad", root=str(root))


def _prepared_gesture(tmp_path, train: str, test: str):
    root = tmp_path / "nvgesture"
    for modality in ("rgb", "depth", "flow"):
        (root / modality / "c0").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({
        "format": "dus-gym-gesture", "dataset": "nvgesture", "classes": [f"class_{k:02d}" for k in range(1, 26)],
        "frames": {"per_clip": 80}, "flow": {"bound": 20.0}}))
    (root / "train.csv").write_text(f"clip,label\n{train}\n")
    (root / "test.csv").write_text(f"clip,label\n{test}\n")
    return root


@pytest.mark.parametrize("train, test, message", [
    ("../../outside,1", "c0,1", "clip name '../../outside' is not a plain file name"),
    ("c0,1", "/tmp/outside,1", "clip name '/tmp/outside' is not a plain file name"),
    ("c0,1", "c0,1", "1 clip(s) are in both the train and the test list (c0)"),
])
def test_a_prepared_gesture_folder_lists_plain_disjoint_clips(train, test, message, tmp_path):
    root = _prepared_gesture(tmp_path, train, test)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_task("nvgesture", root=str(root), pretrained=False)


@pytest.mark.parametrize("image", ["../../outside", "/tmp/outside", ".hidden"])
def test_a_prepared_image_text_folder_lists_plain_image_names(image, tmp_path):
    root = tmp_path / "twitter"
    (root / "images").mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps({
        "format": "dus-gym-imagetext", "dataset": "twitter2015", "classes": ["negative", "neutral", "positive"],
        "text": {"max_length": 30, "vocab_size": 120}, "image": {"size": 32}}))
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text(f"sample,image,label\n{split}-000000,{image},0\n")
    with pytest.raises(ValueError, match="image name .* is not a plain file name"):
        make_task("twitter2015", root=str(root), pretrained=False, text_config={"hidden_size": 8})


def test_prepare_functions_bound_their_sizes_too(tmp_path):
    from dus_gym.tasks.gesture.prepare import prepare_nvgesture
    from dus_gym.tasks.imagetext.prepare import prepare_imagetext

    with pytest.raises(ValueError, match="image_size must be a whole number from 16 to 2048, got 0"):
        prepare_imagetext("twitter2015", tmp_path, tmp_path / "out", image_size=0)
    with pytest.raises(ValueError, match="frames must be a whole number from 1 to 1000, got 1.5"):
        prepare_nvgesture(tmp_path, tmp_path / "out", frames=1.5)
