"""The docs site: `mkdocs build --strict` passes (broken links, missing README sections and docstring errors fail)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_site_builds_strict(tmp_path):
    for name in ("mkdocs", "material", "mkdocstrings"):
        pytest.importorskip(name, reason=f"{name} (the docs extra, in the test extra) is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    getting_started = (site / "getting-started" / "index.html").read_text()
    assert 'id="set-up-on-a-fresh-machine"' in getting_started and "train_policy" in getting_started  # from the README
    assert "aggregate_scores" in (site / "api" / "experiments" / "index.html").read_text()  # from the docstrings
    assert 'href="../method/"' in (site / "results" / "index.html").read_text()  # docs/method.md -> the page


def test_readme_sections_and_their_errors():
    hooks = _hooks()
    text = "# T\n\nintro\n\n## A b\n\none\n\n### A sub\n\n```\n# not a heading\n```\n\n## C\n\ntwo\n"
    level, title, body = hooks.find_section(text, "A b")
    assert (level, title) == (2, "A b") and "### A sub" in body and "# not a heading" in body and "two" not in body
    with pytest.raises(hooks.ReadmeSectionError, match="no section"):
        hooks.find_section(text, "Missing")
