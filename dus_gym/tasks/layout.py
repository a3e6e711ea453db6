"""The prepared layouts on disk: ``metadata.json``, the split lists, and the checks a task runs on them.

Every ``dus-gym prepare`` writes a folder with a ``metadata.json`` (format, data set, classes,
every preprocessing choice) and one CSV per split; a task reads them back through
:func:`read_metadata` and :func:`read_split_csv`, which turn a missing, partial or foreign folder
into one clear error that says what is expected and how to make it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from dus_gym.core.files import write_text_atomic


def write_metadata(dst: Path, metadata: dict[str, Any]) -> None:
    """Write ``dst/metadata.json`` atomically (it is written last: its presence marks a finished prepare)."""
    write_text_atomic(dst / "metadata.json", json.dumps(metadata, indent=2))


def write_split_csv(dst: Path, split: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write ``dst/<split>.csv`` (a header line, then the rows) atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(dst / f"{split}.csv", text.getvalue())


def read_metadata(root: Path, dataset: str, fmt: str, layout: str, splits: Sequence[str]) -> dict[str, Any]:
    """Read ``root/metadata.json`` and check that it is ``dataset`` in format ``fmt`` with the ``splits`` lists.

    Args:
        root: the prepared folder.
        dataset: the data set the task expects.
        fmt: the layout format written by its ``prepare``.
        layout: a description of the expected layout, for the error messages.
        splits: the split lists that must be there (``<split>.csv``).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} data root not found: {root}; expected {layout}")
    try:
        metadata = json.loads((root / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{root / 'metadata.json'} is missing or unreadable; expected {layout}") from err
    if not isinstance(metadata, dict) or metadata.get("format") != fmt or metadata.get("dataset") != dataset:
        found = metadata.get("dataset") if isinstance(metadata, dict) else None
        raise ValueError(f"{root} holds '{found}' data, not '{dataset}'; expected {layout}")
    classes = metadata.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or len(set(classes)) != len(classes):
        raise ValueError(f"{root / 'metadata.json'} lacks 'classes' (a list of at least 2 distinct class names); "
                         f"rerun 'dus-gym prepare {dataset}'")
    for split in splits:
        if not (root / f"{split}.csv").is_file():
            raise FileNotFoundError(f"{root / f'{split}.csv'} is missing; expected {layout}")
    return metadata


def read_split_csv(root: Path, split: str, what: str = "clips") -> list[list[str]]:
    """The rows of ``root/<split>.csv`` without its header; an empty list is an error ("lists no <what>")."""
    with open(root / f"{split}.csv", newline="") as f:
        rows = [row for row in list(csv.reader(f))[1:] if row]
    if not rows:
        raise ValueError(f"{root / f'{split}.csv'} lists no {what}; rerun 'dus-gym prepare'")
    return rows


OPTION_BOUNDS: dict[str, tuple[int, int]] = {
    "image_size": (16, 2048),
    "frame_size": (8, 1024),
    "frames": (1, 1000),
    "max_length": (2, 512),
    "workers": (1, 1024),
}
"""The range of every size and count option of ``dus-gym prepare`` (checked before anything is read)."""


def check_option(name: str, value: int | None) -> None:
    """Raise a ValueError unless ``value`` is None or a whole number in ``OPTION_BOUNDS[name]``."""
    if value is None:
        return
    lo, hi = OPTION_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}, got {value!r}")


def check_clip_name(clip: str, where: str, what: str = "clip name") -> str:
    """``clip`` if it is a plain file name (no path separator, not ``.``/``..``, no leading dot); else a ValueError.

    Clip names become file and folder names under the data folder (``audio/<clip>.npy``,
    ``visual/<clip>/``), and image names and video names are read below the release folder; a name
    such as ``../../victim/evil`` or ``/etc/x`` would escape it.
    """
    bad = (not clip or clip.startswith(".") or "\0" in clip or "/" in clip or "\\" in clip
           or (os.sep in clip) or (os.altsep is not None and os.altsep in clip))
    if bad:
        raise ValueError(f"{where}: {what} {clip[:100]!r} is not a plain file name (no '/', '\\', '..' or "
                         "leading '.'); it must name a file inside its folder")
    return clip


def check_disjoint(lists: dict[str, list[str]], where: str, what: str = "clip", unique: bool = False) -> None:
    """Raise a ValueError when a ``what`` is in both the train and the test list (or, ``unique``, twice in one list)."""
    for split, names in lists.items() if unique else ():
        seen: set[str] = set()
        twice = sorted({name for name in names if name in seen or seen.add(name)})
        if twice:
            raise ValueError(f"{where}: {len(twice)} {what}(s) are listed twice in the {split} list "
                             f"({', '.join(twice[:5])}{', ...' if len(twice) > 5 else ''}); fix the list")
    both = sorted(set(lists["train"]) & set(lists["test"]))
    if both:
        raise ValueError(f"{where}: {len(both)} {what}(s) are in both the train and the test list "
                         f"({', '.join(both[:5])}{', ...' if len(both) > 5 else ''}); a test {what} seen in training "
                         "inflates the test accuracy: fix the lists")


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (kept, held out): a seeded hold-out of ``fraction``, stratified by label when possible."""
    positions = np.arange(len(labels))
    try:
        kept, held = train_test_split(positions, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError:  # too few samples of a class to stratify (tiny data sets): plain seeded split
        kept, held = train_test_split(positions, test_size=fraction, random_state=seed)
    return np.sort(kept), np.sort(held)
