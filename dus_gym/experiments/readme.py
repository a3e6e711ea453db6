"""Tables written into a README by the tool that measured them (between a named block's markers).

A block is two lines, ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; writing replaces what lies
between them with a line naming the command, then the table, atomically. The markers are checked
before the measurement starts, so that hours of runs do not end on a missing block.
"""

from __future__ import annotations

from pathlib import Path

from dus_gym.core.config import ConfigError
from dus_gym.core.files import write_text_atomic


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
