"""What an experiment writes: its record (JSON) and markdown table, and the table in a docs block.

Every experiment (compare, bench, family evaluation, reference agents, tuning) formats its rows with
:func:`table_header` and :func:`table_row`, and writes ``<name>.json`` and ``table.md`` into its
output folder with :func:`write_results`, atomically.

A table is also written into a markdown file by the tool that measured it, between a named
block's markers (``--readme FILE --readme-block NAME``). A block is two lines,
``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; writing replaces what lies
between them with a line naming the command, then the table, atomically. The markers are checked
before the measurement starts, so that hours of runs do not end on a missing block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dus_gym.core.files import write_text_atomic
from dus_gym.error import ConfigError


def table_row(cells: Sequence[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def table_header(head: Sequence[str]) -> list[str]:
    """The header row and the separator row of a markdown table with columns ``head``."""
    return [table_row(head), "|" + "---|" * len(head)]


def write_results(folder: str | Path, name: str, record: dict[str, Any], indent: int = 2) -> None:
    """Write ``record`` as ``folder/<name>.json`` and its ``record["table"]`` as ``folder/table.md``, atomically."""
    folder = Path(folder)
    write_text_atomic(folder / f"{name}.json", json.dumps(record, indent=indent))
    write_text_atomic(folder / "table.md", record["table"] + "\n")


def readme_markers(name: str) -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def check_readme_block(readme: Path, name: str) -> None:
    """Raise a :class:`ConfigError` unless ``readme`` exists and holds the markers of block ``name``."""
    start, end = readme_markers(name)
    if not readme.is_file():
        raise ConfigError(f"--readme {readme}: no such file")
    text = readme.read_text()
    if start not in text or end not in text:
        raise ConfigError(f"{readme} has no '{start}' ... '{end}' block to fill; add both lines where the table "
                          "should go")


def write_readme_block(readme: Path, name: str, table: str, command: str) -> None:
    """Replace the text of block ``name`` of ``readme`` with ``table``, naming the ``command`` that wrote it."""
    check_readme_block(readme, name)
    start, end = readme_markers(name)
    before, rest = readme.read_text().split(start, 1)
    _, after = rest.split(end, 1)
    block = f"{start}\n<!-- written by `{command}`; do not edit by hand -->\n\n{table}\n{end}"
    write_text_atomic(readme, before + block + after)
