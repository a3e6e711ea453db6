"""The family evaluation: a tuning record that is not a family.json is refused."""

import pytest

from dus_gym.core.config import ConfigError


def test_heuristic_from_refuses_a_file_that_is_no_family_record(tmp_path):
    from dus_gym.experiments.family import read_tuning

    bad = tmp_path / "family.json"
    bad.write_text('{"rows": {}}')
    with pytest.raises(ConfigError, match="not the family.json of a family evaluation"):
        read_tuning(bad)
    with pytest.raises(ConfigError, match="not the family.json"):
        read_tuning(tmp_path / "missing.json")
