"""Reading prepared files: NaN/inf or unreadable features name the clip; a decompression bomb is one error."""

import numpy as np
import pytest

from tests.helpers import png_header_only, prepared_root


def test_nan_in_on_disk_features_names_the_clip(tmp_path):
    from dus_gym.tasks.audiovisual import AudioClips

    root = prepared_root(tmp_path, "clip,label\nc0,NEU\n", np.array([[0.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="c0.npy hold NaN/inf"):
        AudioClips(root, ["c0"])[0:1]
    (root / "audio" / "c0.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(ValueError, match="c0.npy are unreadable"):
        AudioClips(root, ["c0"])[0:1]


def test_a_decompression_bomb_in_a_prepared_folder_is_one_error(tmp_path):
    from dus_gym.tasks.sources import load_image

    png_header_only(tmp_path / "frame_0001.jpg", 30_000, 30_000)
    with pytest.raises(ValueError, match="frame_0001.jpg is missing or unreadable .*decompression bomb"):
        load_image(tmp_path / "frame_0001.jpg", 16)
