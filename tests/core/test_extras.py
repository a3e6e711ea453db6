"""Optional dependencies: a missing one is one line naming the extra that installs it."""

import json

import pytest

from dus_gym.core.extras import require


def test_require_names_the_extra():
    assert require("json", "bench", "the tests") is json
    with pytest.raises(ImportError, match=r"dus_gym_no_such_module is not installed \(the tests need it\): "
                                          r"pip install 'dus-gym\[tune\]'"):
        require("dus_gym_no_such_module.sub", "tune", "the tests")
