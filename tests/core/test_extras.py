"""Optional dependencies: a missing one is one line naming the extra that installs it."""

import json
import sys

import pytest

from dus_gym.cli import main
from dus_gym.core.extras import require


def test_require_names_the_extra():
    assert require("json", "bench", "the tests") is json
    with pytest.raises(ImportError, match=r"dus_gym_no_such_module is not installed \(the tests need it\): "
                                          r"pip install 'dus-gym\[tune\]'"):
        require("dus_gym_no_such_module.sub", "tune", "the tests")


def test_missing_extra_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # an import of it raises ImportError
    out = tmp_path / "bench"
    assert main(["bench", "--tasks", "synthetic", "--iterations", "5", "--seeds", "0", "--out", str(out)]) == 2
    assert "pip install 'dus-gym[bench]'" in capsys.readouterr().err and not out.exists()
