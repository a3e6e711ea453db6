"""``dus-gym prepare``: names that are paths, samples in both splits, decompression bombs and unbounded sizes
are one line, before anything is written."""

import pytest

from tests.helpers import one_line, png_header_only


@pytest.mark.parametrize("clip", ["../../victim/evil", "/tmp/evil", "a/b", "..", ".hidden", "a\\b"])
def test_prepare_refuses_clip_names_that_are_paths(clip, capsys, tmp_path):
    src, dst = tmp_path / "raw", tmp_path / "out" / "cremad"
    src.mkdir()
    (src / "train.csv").write_text(f"{clip},NEU\nok,HAP\n")
    (src / "test.csv").write_text("t0,NEU\n")
    err = one_line(capsys, ["prepare", "cremad", str(src), str(dst), "--no-progress"], tmp_path)
    assert "is not a plain file name" in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != src]
    assert written == [] and not dst.exists()


def test_prepare_refuses_a_clip_in_both_lists(capsys, tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "train.csv").write_text("c0,NEU\nc1,HAP\n")
    (src / "test.csv").write_text("c1,HAP\n")
    assert "in both the train and the test list (c1)" in one_line(
        capsys, ["prepare", "cremad", str(src), str(tmp_path / "out")], tmp_path)


def _twitter_release(tmp_path, test_rows=None, train_rows=None):
    """A TomBERT-layout Twitter2015 release of plain rows (ImageID, tweet); images only for plain names."""
    from PIL import Image

    src = tmp_path / "raw"
    (src / "twitter2015_images").mkdir(parents=True)
    header = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String"
    rows = {"train": train_rows or [("a.jpg", "the $T$ is great"), ("b.jpg", "the $T$ is sad")],
            "dev": [("c.jpg", "the $T$ is fine")], "test": test_rows or [("d.jpg", "the $T$ is okay")]}
    for split, split_rows in rows.items():
        lines = [header] + [f"{i}\t{i % 3}\t{image}\t{text}\tthing" for i, (image, text) in enumerate(split_rows)]
        (src / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        for image, _ in split_rows:
            if "/" not in image:
                Image.new("RGB", (8, 8)).save(src / "twitter2015_images" / image)
    return src


@pytest.mark.parametrize("image", ["../../outside.jpg", "/tmp/outside.jpg", "sub/../../outside.jpg", ".hidden.jpg",
                                   "..\\outside.jpg"])
def test_prepare_refuses_image_names_that_are_paths(image, capsys, tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "outside.jpg")  # what a path would reach
    src, dst = _twitter_release(tmp_path, test_rows=[(image, "the $T$ is okay")]), tmp_path / "out"
    err = one_line(capsys, ["prepare", "twitter2015", str(src), str(dst), "--no-progress", "--workers", "1"],
                   tmp_path)
    assert "image name" in err and "is not a plain file name" in err
    assert not dst.exists()


@pytest.mark.parametrize("dataset", ["twitter2015", "sarcasm"])
def test_prepare_refuses_an_image_text_sample_in_both_train_and_test(dataset, capsys, tmp_path):
    from PIL import Image

    if dataset == "twitter2015":
        src = _twitter_release(tmp_path, test_rows=[("b.jpg", "the $T$ is sad")])
    else:
        src = tmp_path / "raw"
        (src / "text").mkdir(parents=True)
        (src / "dataset_image").mkdir()
        for split, rows in (("train", [["1", "so nice", 0], ["2", "yeah right", 1]]),
                            ("valid2", [["3", "calm day", 0, 0]]), ("test2", [["2", "yeah right", 1, 1]])):
            (src / "text" / f"{split}.txt").write_text("\n".join(repr(r) for r in rows) + "\n")
            for row in rows:
                Image.new("RGB", (8, 8)).save(src / "dataset_image" / f"{row[0]}.jpg")
    err = one_line(capsys, ["prepare", dataset, str(src), str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert "1 sample (image and text)(s) are in both the train and the test list" in err
    assert not (tmp_path / "out").exists()


def _nvgesture_lists(tmp_path, train, test):
    src = tmp_path / "raw"
    src.mkdir()
    line = "path:./Video_data/{} depth:sk_depth:4:12 color:{}:4:12 duo_left:duo_left:4:12 label:1"
    for name, paths in (("train", train), ("test", test)):
        rows = [line.format(*p) if isinstance(p, tuple) else line.format(p, "sk_color") for p in paths]
        (src / f"nvgesture_{name}_correct_cvpr2016_v2.lst").write_text("\n".join(rows) + "\n")
    return src


@pytest.mark.parametrize("train, test, message", [
    ([("class_01/subject1_r0", "../../../../outside_vid")], ["class_01/subject2_r0"],
     "color video name '../../../../outside_vid' is not a plain file name"),
    ([("class_01/subject1_r0", "/tmp/outside_vid")], ["class_01/subject2_r0"], "is not a plain file name"),
    ([("class_01/subject1_r0", ".hidden")], ["class_01/subject2_r0"], "is not a plain file name"),
    (["class_01/subject1_r0", "class_01/subject2_r0"], ["class_01/subject2_r0"],
     "1 clip(s) are in both the train and the test list (class_01_subject2_r0)"),
    (["class_01/subject1_r0", "class_01/subject1_r0"], ["class_01/subject2_r0"],
     "1 clip(s) are listed twice in the train list (class_01_subject1_r0)"),
    (["class_01/subject2_r0"], ["class_01_subject2/r0"],
     "'Video_data/class_01/subject2_r0' and 'Video_data/class_01_subject2/r0', which both become the prepared clip "
     "'class_01_subject2_r0'"),
    (["class_01/subject1_r0"], ["../../outside/r0"], "must be relative to the release folder"),
])
def test_prepare_nvgesture_refuses_paths_overlaps_and_name_collisions(train, test, message, capsys, tmp_path):
    src = _nvgesture_lists(tmp_path, train, test)
    err = one_line(capsys, ["prepare", "nvgesture", str(src), str(tmp_path / "out"), "--no-progress"], tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_prepare_refuses_a_decompression_bomb_in_one_line(capsys, tmp_path):
    pytest.importorskip("transformers")
    from tests.imagetext_fixture import make_vocab

    src = _twitter_release(tmp_path)
    png_header_only(src / "twitter2015_images" / "b.jpg", 30_000, 30_000)
    vocab = make_vocab(tmp_path / "vocab", ["the thing is great", "the thing is sad okay fine"])
    err = one_line(capsys, ["prepare", "twitter2015", str(src), str(tmp_path / "out"), "--no-progress", "--workers",
                            "1", "--tokenizer", str(vocab), "--image-size", "16"], tmp_path)
    assert "1 image(s) could not be read (e.g. ['b']" in err and "decompression-bomb limit" in err
    assert not (tmp_path / "out" / "images" / "b.jpg").exists() and not (tmp_path / "out" / "metadata.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["twitter2015", "--image-size", "0"], "image_size must be a whole number from 16 to 2048, got 0"),
    (["twitter2015", "--image-size", "100000"], "image_size must be a whole number from 16 to 2048, got 100000"),
    (["sarcasm", "--image-size", "-3"], "image_size must be a whole number from 16 to 2048"),
    (["twitter2015", "--max-length", "100000"], "max_length must be a whole number from 2 to 512"),
    (["twitter2015", "--max-length", "1"], "max_length must be a whole number from 2 to 512"),
    (["nvgesture", "--frame-size", "100000"], "frame_size must be a whole number from 8 to 1024"),
    (["nvgesture", "--frames", "0"], "frames must be a whole number from 1 to 1000"),
    (["nvgesture", "--frames", "1000000"], "frames must be a whole number from 1 to 1000"),
    (["cremad", "--workers", "0"], "workers must be a whole number from 1 to 1024"),
    (["kinetics-sounds", "--workers", "100000"], "workers must be a whole number from 1 to 1024"),
])
def test_prepare_sizes_and_counts_are_bounded_before_anything_is_read(argv, message, capsys, tmp_path):
    err = one_line(capsys, ["prepare", argv[0], str(tmp_path / "nowhere"), str(tmp_path / "out"), *argv[1:]],
                   tmp_path)
    assert message in err
    assert not (tmp_path / "out").exists()
