"""Run folders made at once stay distinct; a full disk is one clear error and leaves the old file."""

import pytest


def test_run_folders_made_at_once_by_many_threads_are_distinct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dus_gym.core.files import new_run_folder

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: new_run_folder(tmp_path, "same-name"), range(16)))
    assert len(set(folders)) == 16 and all(f.is_dir() for f in folders)
    # numbered as SB3 numbers its runs: the next one after the highest
    assert sorted(int(f.name.split("_")[-1]) for f in folders) == list(range(1, 17))
    assert new_run_folder(tmp_path, "same-name").name == "same-name_17"
    assert new_run_folder(tmp_path, "same").name == "same_1"  # a name that prefixes another is its own series


def test_a_full_disk_is_one_clear_error_and_leaves_the_old_file(tmp_path):
    import errno

    from dus_gym.core.files import atomic_path

    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(OSError, match="no space left on device.*free space and run again"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
