"""The repository stands on its own: no tracked link points outside it (a fresh clone elsewhere would break)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_tracked_symlink_leaves_the_repository():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000 ")]
    outside = [link for link in links
               if not (ROOT / os.path.dirname(link) / os.readlink(ROOT / link)).resolve().is_relative_to(ROOT)]
    assert outside == [], f"tracked links that point outside the repository: {outside}"
    # the run folders are ignored whether they are a folder or a link (a link is not a folder to git)
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "runs"], cwd=ROOT)
    assert ignored.returncode == 0
