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
