"""``dus-gym bench``: a missing optional dependency is one line naming its extra, before any run."""

import sys

from dus_gym.cli import main


def test_missing_extra_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it raises ImportError
    out = tmp_path / "bench"
    assert main(["bench", "--tasks", "synthetic", "--iterations", "5", "--seeds", "0", "--out", str(out)]) == 2
    assert "pip install 'dus-gym[bench]'" in capsys.readouterr().err and not out.exists()
