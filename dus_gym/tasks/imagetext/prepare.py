"""``dus-gym prepare twitter2015 | sarcasm``: the published image-text releases -> the layout the tasks read.

Sources (bring your own copy):

- **Twitter2015** (Yu and Jiang, IJCAI 2019, the TomBERT release): ``train.tsv``, ``dev.tsv``,
  ``test.tsv`` (header ``index  #1 Label  #2 ImageID  #3 String  #3 String``: label 0/1/2 =
  negative/neutral/positive, the image file, the tweet with ``$T$`` for the target, the target),
  and the image folder ``twitter2015_images/``. Each line is one (tweet, target) pair; the text is
  the tweet with ``$T$`` replaced by its target.
- **Sarcasm** (Cai et al., ACL 2019): ``text/train.txt``, ``text/valid2.txt``, ``text/test2.txt``
  (one Python-literal list per line: image id, text, ..., label; in valid2/test2 the last element is
  the label of the second human annotator, the one the field uses) and ``dataset_image/<id>.jpg``.

Either data set is also read from JSON (a list of objects with ``image``, ``text``, ``label``),
JSON lines, or a TSV with ``Label``, ``ImageID``, ``String`` columns (the converted files the
field's code reads); the split files are found under SRC by their published names or given with
``--train-list/--val-list/--test-list``.

Layout written under DST::

    metadata.json                   data set, classes, counts, every text and image choice
    train.csv, val.csv, test.csv    sample,image,label (label: class index)
    text/<split>.npz                input_ids and attention_mask (N x max_length), BERT-tokenised
    images/<image>.jpg              the image, resized to image_size x image_size

Text (the field's cleaning, then BERT's tokenizer): lower case; the characters ,.'!?"()*#:;~
removed; - and / made spaces; runs of spaces collapsed; the first ``max_words`` words kept (20 for
Twitter2015, 30 for Sarcasm); then ``[CLS] ... [SEP]`` word pieces of ``bert-base-uncased``'s
vocabulary (or the ``--tokenizer`` given), truncated or padded to ``max_length`` = 30 tokens.
Images: RGB, resized (bilinear) to 384 x 384 (Twitter2015) or 224 x 224 (Sarcasm), JPEG quality 95.
Images are written in parallel worker processes, each under a temporary name; a second run skips
the images already there.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dus_gym.core.extras import require
from dus_gym.core.files import atomic_path
from dus_gym.tasks.bert import import_transformers
from dus_gym.tasks.layout import check_clip_name, check_disjoint, check_option, write_metadata, write_split_csv
from dus_gym.tasks.media import JPEG_QUALITY, run_parallel, save_jpeg

LAYOUT_VERSION = 1
FORMAT = "dus-gym-imagetext"
SPLITS = ("train", "val", "test")
DEFAULT_TOKENIZER = "bert-base-uncased"
MAX_LENGTH = 30
"""Tokens per text: the ``max_length`` of the field's image-text training code."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
STRIP_CHARACTERS = re.compile(r"[,.'!?\"()*#:;~]")


@dataclass(frozen=True)
class ImageTextSpec:
    """One image-text data set: its classes, where its files are, and its text and image settings."""

    name: str
    classes: tuple[str, ...]
    lists: dict[str, tuple[str, ...]]
    """Split -> candidate paths of its published list under SRC (the first that exists is used)."""
    image_dirs: tuple[str, ...]
    """Candidate image folders under SRC."""
    max_words: int
    image_size: int


DATASETS = {
    "twitter2015": ImageTextSpec(
        "twitter2015", ("negative", "neutral", "positive"),
        {"train": ("train.tsv",), "val": ("dev.tsv",), "test": ("test.tsv",)},
        ("twitter2015_images", "images"), max_words=20, image_size=384),
    "sarcasm": ImageTextSpec(
        "sarcasm", ("not sarcastic", "sarcastic"),
        {"train": ("text/train.txt", "train.txt", "train.json", "train.jsonl", "train.tsv"),
         "val": ("text/valid2.txt", "valid2.txt", "valid.json", "valid.jsonl", "dev.tsv", "valid.tsv"),
         "test": ("text/test2.txt", "test2.txt", "test.json", "test.jsonl", "test.tsv")},
        ("dataset_image", "images"), max_words=30, image_size=224),
}


@dataclass(frozen=True)
class Record:
    """One sample of a published list: its image (file name or id), its text and its class index."""

    image: str
    text: str
    label: int


def clean_text(text: str, max_words: int) -> str:
    """The field's text cleaning before BERT (see the module docstring)."""
    text = STRIP_CHARACTERS.sub("", text.lower()).replace("-", " ").replace("/", " ")
    return " ".join(text.split()[:max_words])


def _label(value: Any, where: str, n_classes: int) -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where}: label {value!r} is not a class index") from None
    if not 0 <= label < n_classes:
        raise ValueError(f"{where}: label {label} is outside [0, {n_classes - 1}]")
    return label


def _read_tsv(path: Path, n_classes: int) -> list[Record]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise ValueError(f"{path} is empty")
    header = [re.sub(r"^#\d+\s*", "", h.strip()).lower() for h in rows[0]]
    if "label" not in header or "imageid" not in header or "string" not in header:
        raise ValueError(f"{path}: expected a header with Label, ImageID and String columns "
                         f"(TomBERT: index, #1 Label, #2 ImageID, #3 String, #3 String), got {rows[0]}")
    strings = [i for i, h in enumerate(header) if h == "string"]
    label_at, image_at = header.index("label"), header.index("imageid")
    records = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise ValueError(f"{path}, line {line}: expected {len(header)} tab-separated fields, got {len(row)}")
        text = row[strings[0]]
        if len(strings) > 1:  # TomBERT: the tweet with $T$, then its target
            text = text.replace("$T$", row[strings[1]])
        records.append(Record(row[image_at].strip(), text, _label(row[label_at], f"{path}, line {line}", n_classes)))
    return records


def _from_mapping(item: Any, where: str, n_classes: int) -> Record:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object with image, text and label, got {type(item).__name__}")
    image = item.get("image", item.get("image_id", item.get("id")))
    if image is None or "text" not in item or "label" not in item:
        raise ValueError(f"{where}: expected the keys image, text and label, got {sorted(item)}")
    return Record(Path(str(image)).name, str(item["text"]), _label(item["label"], where, n_classes))


def _read_json(path: Path, n_classes: int) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples")
    return [_from_mapping(item, f"{path}, item {i}", n_classes) for i, item in enumerate(data)]


def _read_jsonl(path: Path, n_classes: int) -> list[Record]:
    records = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            try:
                item = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {line} is not valid JSON ({err})") from err
            records.append(_from_mapping(item, f"{path}, line {line}", n_classes))
    return records


def _read_literal_lines(path: Path, n_classes: int) -> list[Record]:
    """Cai et al.'s text files: one ``[id, text, ..., label]`` Python literal per line (read, never evaluated)."""
    records = []
    for line, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            item = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{path}, line {line}: expected a list such as ['id', 'text', 1] ({err})") from None
        if not isinstance(item, (list, tuple)) or len(item) < 3:
            raise ValueError(f"{path}, line {line}: expected [image id, text, ..., label], got {text[:80]!r}")
        records.append(Record(str(item[0]), str(item[1]), _label(item[-1], f"{path}, line {line}", n_classes)))
    return records


READERS = {".tsv": _read_tsv, ".json": _read_json, ".jsonl": _read_jsonl, ".txt": _read_literal_lines}
"""File suffix -> reader of a published split list."""


def read_records(path: Path, n_classes: int) -> list[Record]:
    """The samples of a split list in any of the published formats (chosen by the file's suffix)."""
    if not path.is_file():
        raise FileNotFoundError(f"split list not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unknown list format '{path.suffix}' (expected one of {sorted(READERS)})")
    records = reader(path, n_classes)
    if not records:
        raise ValueError(f"split list {path} lists no sample")
    return records


def find_list(spec: ImageTextSpec, src: Path, split: str, given: str | Path | None) -> Path:
    """The split's list: the given path, or the first published name found under ``src``."""
    if given is not None:
        return Path(given)
    for name in spec.lists[split]:
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(f"{spec.name} {split} list not found under {src} (looked for {list(spec.lists[split])}); "
                            f"give it with --{split}-list")


def find_image_dir(spec: ImageTextSpec, src: Path) -> Path:
    """The folder of the images under ``src``."""
    for name in spec.image_dirs:
        if (src / name).is_dir():
            return src / name
    raise FileNotFoundError(f"{spec.name} image folder not found under {src} (looked for {list(spec.image_dirs)})")


def find_image(folder: Path, image: str) -> Path | None:
    """The file of ``image`` (a file name, or an id without its extension) in ``folder``, or None."""
    if (folder / image).is_file():
        return folder / image
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{image}{suffix}").is_file():
            return folder / f"{image}{suffix}"
    return None


def image_key(image: str) -> str:
    """The prepared name of an image: its file name without extension (ids and file names give the same key)."""
    stem = Path(image).stem if Path(image).suffix.lower() in IMAGE_SUFFIXES else image
    if not stem or "/" in stem or stem.startswith("."):
        raise ValueError(f"image name {image!r} cannot be a file name")
    return stem


def resize_image(source: str | None, target: str, size: int) -> bool:
    """Write ``source`` as an RGB ``size`` x ``size`` JPEG at ``target``; None or an unreadable file: a black image.

    Returns False when a black image was written instead. Runs in a worker process.
    """
    Image = require("PIL.Image", "imagetext", "the image-text images")  # noqa: N806

    pixels = None
    if source is not None:
        try:
            with Image.open(source) as image:  # refuses more than 2 x Image.MAX_IMAGE_PIXELS before decoding
                pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
        except (OSError, Image.DecompressionBombError):
            pixels = None
    ok = pixels is not None
    if pixels is None:
        pixels = np.zeros((size, size, 3), dtype=np.uint8)
    with atomic_path(Path(target)) as tmp:
        save_jpeg(tmp, pixels)
    return ok


def load_tokenizer(name: str) -> Any:
    """BERT's word-piece tokenizer: a hub name, a local folder (vocab.txt or tokenizer.json), or a vocab.txt file."""
    transformers = import_transformers()
    path = Path(name).expanduser()
    source = str(path.parent) if path.is_file() and path.name == "vocab.txt" else name
    try:
        return transformers.BertTokenizerFast.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the BERT tokenizer '{name}' ({str(err).splitlines()[0]}); give a hub name, a "
                         "local folder or a vocab.txt file with --tokenizer") from err


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """``[CLS] text [SEP]`` word-piece ids and attention masks, truncated or padded to ``max_length``."""
    encoded = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="np")
    return {"input_ids": encoded["input_ids"].astype(np.int32),
            "attention_mask": encoded["attention_mask"].astype(np.uint8)}


def prepare_imagetext(dataset: str, src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                      val_list: str | Path | None = None, test_list: str | Path | None = None,
                      tokenizer: str = DEFAULT_TOKENIZER, max_length: int = MAX_LENGTH, image_size: int | None = None,
                      missing_images: str = "error", workers: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Prepare an image-text data set from its published release; return the metadata.

    Args:
        dataset: "twitter2015" or "sarcasm".
        src: the release (its split lists and image folder).
        dst: the output folder (created; images already there are skipped).
        train_list: the train list, if not at its published path under ``src``.
        val_list: the validation list, likewise.
        test_list: the test list, likewise.
        tokenizer: BERT tokenizer: a hub name, a local folder, or a ``vocab.txt`` file.
        max_length: tokens per text.
        image_size: side of the stored images (default: the data set's).
        missing_images: "error" (default) stops on a listed image that is missing or unreadable;
            "blank" writes a black image for it instead and lists it in the metadata.
        workers: worker processes for the images (default: the CPU count).
        progress: show a progress bar.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown image-text data set '{dataset}'; choose among {sorted(DATASETS)}")
    if missing_images not in ("error", "blank"):
        raise ValueError(f"missing_images must be 'error' or 'blank', got {missing_images!r}")
    for name, value in (("max_length", max_length), ("image_size", image_size), ("workers", workers)):
        check_option(name, value)  # max_length >= 2: [CLS] and [SEP]
    spec = DATASETS[dataset]
    size = spec.image_size if image_size is None else image_size
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"raw data folder not found: {src}")
    given = {"train": train_list, "val": val_list, "test": test_list}
    paths = {split: find_list(spec, src, split, given[split]) for split in SPLITS}
    records = {split: read_records(path, len(spec.classes)) for split, path in paths.items()}
    for split, split_records in records.items():
        for record in split_records:  # a name read below the image folder, never a path
            check_clip_name(record.image, f"{paths[split]}", "image name")
    keys = {split: [f"{image_key(r.image)} {r.text!r}" for r in rs] for split, rs in records.items()}
    check_disjoint(keys, f"the {dataset} split lists", "sample (image and text)")
    folder = find_image_dir(spec, src)
    images: dict[str, Path | None] = {}
    for split_records in records.values():
        for record in split_records:
            images.setdefault(image_key(record.image), find_image(folder, record.image))
    missing = sorted(key for key, path in images.items() if path is None)
    if missing and missing_images == "error":
        raise FileNotFoundError(f"{len(missing)} listed image(s) not found in {folder} (e.g. {missing[:3]}): complete "
                                "the release, or pass --missing-images blank to write a black image for them")
    text_tokenizer = load_tokenizer(tokenizer)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    todo = [(None if path is None else str(path), str(dst / "images" / f"{key}.jpg"), size)
            for key, path in sorted(images.items()) if not (dst / "images" / f"{key}.jpg").is_file()]
    written = run_parallel(resize_image, todo, workers, f"prepare {dataset}", progress)
    unreadable = sorted(Path(job[1]).stem for job, ok in zip(todo, written, strict=True) if not ok and job[0])
    if unreadable and missing_images == "error":
        for key in unreadable:  # the black placeholders must not count as done on the next run
            (dst / "images" / f"{key}.jpg").unlink(missing_ok=True)
        raise ValueError(f"{len(unreadable)} image(s) could not be read (e.g. {unreadable[:3]}; not an image, "
                         "damaged, or over Pillow's decompression-bomb limit of 2 x 89,478,485 pixels): replace "
                         "them, or pass --missing-images blank to write a black image for them")
    for split, split_records in records.items():
        tokens = tokenize(text_tokenizer, [clean_text(r.text, spec.max_words) for r in split_records], max_length)
        with atomic_path(dst / "text" / f"{split}.npz") as tmp:
            np.savez(tmp, **tokens)
        write_split_csv(dst, split, ("sample", "image", "label"),
                        [(f"{split}-{i:06d}", image_key(r.image), r.label) for i, r in enumerate(split_records)])
    metadata = {
        "format": FORMAT, "version": LAYOUT_VERSION, "dataset": dataset, "classes": list(spec.classes),
        "counts": {split: len(rs) for split, rs in records.items()},
        "sources": {split: str(path) for split, path in paths.items()},
        "text": {"tokenizer": tokenizer, "vocab_size": len(text_tokenizer), "max_length": max_length,
                 "max_words": spec.max_words, "lowercase": True, "removed_characters": ",.'!?\"()*#:;~",
                 "spaces_for": "-/", "special_tokens": "[CLS] text [SEP]", "padding": "max_length"},
        "image": {"size": size, "resample": "bilinear", "mode": "RGB", "format": "jpg", "quality": JPEG_QUALITY},
        "blank_images": sorted(set(missing) | set(unreadable)),
    }
    write_metadata(dst, metadata)
    return metadata


def prepare_twitter2015(src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                        val_list: str | Path | None = None, test_list: str | Path | None = None,
                        tokenizer: str = DEFAULT_TOKENIZER, max_length: int = MAX_LENGTH,
                        image_size: int | None = None, missing_images: str = "error", workers: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """``dus-gym prepare twitter2015``: see :func:`prepare_imagetext`."""
    return prepare_imagetext("twitter2015", src, dst, train_list, val_list, test_list, tokenizer, max_length,
                             image_size, missing_images, workers, progress)


def prepare_sarcasm(src: str | Path, dst: str | Path, train_list: str | Path | None = None,
                    val_list: str | Path | None = None, test_list: str | Path | None = None,
                    tokenizer: str = DEFAULT_TOKENIZER, max_length: int = MAX_LENGTH, image_size: int | None = None,
                    missing_images: str = "error", workers: int | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """``dus-gym prepare sarcasm``: see :func:`prepare_imagetext`."""
    return prepare_imagetext("sarcasm", src, dst, train_list, val_list, test_list, tokenizer, max_length,
                             image_size, missing_images, workers, progress)
