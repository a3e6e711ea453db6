"""The docs site: `mkdocs build --strict` passes (broken links, missing anchors and docstring errors fail)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    for name in ("mkdocs", "material", "mkdocstrings"):
        pytest.importorskip(name, reason=f"{name} (the docs extra, in the test extra) is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    getting_started = (site / "getting-started" / "index.html").read_text()
    assert 'id="set-up-on-a-fresh-machine"' in getting_started and "train_policy" in getting_started
    assert "aggregate_scores" in (site / "api" / "experiments" / "index.html").read_text()  # from the docstrings
    assert 'href="../method/"' in (site / "results" / "index.html").read_text()  # docs/method.md -> the page
    assert "late fusion (alone models)" in (site / "results" / "compare" / "index.html").read_text()  # a block


def block_text(page: Path, name: str) -> str:
    """The text between the markers of the tool-written block ``name`` of ``page``."""
    text = page.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert start in text and end in text, f"{page} has no block {name}"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_readme_headline_rows_are_the_tool_written_ones():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) >= 5
    block = block_text(ROOT / "docs" / "results" / "family.md", "family-synthetic")
    assert [row for row in rows if row not in block.splitlines()] == []


def test_the_readme_is_a_front_door_and_no_page_is_a_stub():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    for page in (ROOT / "docs").glob("*.md"):
        lines = [line for line in page.read_text().splitlines() if line.strip()]
        assert len(lines) >= 15, f"{page.name} is a stub ({len(lines)} lines)"
