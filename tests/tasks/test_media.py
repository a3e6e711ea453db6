"""Writing prepared files: the temporary file of an atomic save does not follow a planted symlink."""

import numpy as np


def test_temporary_files_do_not_follow_a_planted_symlink(tmp_path):
    from dus_gym.tasks.audiovisual.prepare import save_npy_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "audio").mkdir()
    for name in (".c0.tmp.npy", ".c0.npy.tmp", ".c0.npy.tmp.npy"):  # the fixed names of before
        (tmp_path / "audio" / name).symlink_to(victim)
    save_npy_atomic(tmp_path / "audio" / "c0.npy", np.ones(3, np.float16))
    assert victim.read_text() == "precious"
    assert np.load(tmp_path / "audio" / "c0.npy").tolist() == [1.0, 1.0, 1.0]
