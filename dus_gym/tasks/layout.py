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
    if metadata.get("format") != fmt or metadata.get("dataset") != dataset:
        raise ValueError(f"{root} holds '{metadata.get('dataset')}' data, not '{dataset}'; expected {layout}")
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


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (kept, held out): a seeded hold-out of ``fraction``, stratified by label when possible."""
    positions = np.arange(len(labels))
    try:
        kept, held = train_test_split(positions, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError:  # too few samples of a class to stratify (tiny data sets): plain seeded split
        kept, held = train_test_split(positions, test_size=fraction, random_state=seed)
    return np.sort(kept), np.sort(held)
